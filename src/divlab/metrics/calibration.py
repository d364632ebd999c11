"""Expected calibration error (ECE) of confidences against correctness.

Naeini, Cooper, Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian Binning" (AAAI 2015);
Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks" (ICML 2017), Eq. 3: with M
equal-width bins B_m = ((m - 1)/M, m/M] (the first bin also holds confidence 0) over n predictions,

    ECE = sum_m |B_m| / n * | acc(B_m) - conf(B_m) |,

acc(B_m) the share of correct predictions in the bin and conf(B_m) their mean confidence; empty bins add 0.
The f-DPO paper (Wang et al. 2023) reports ECE of DPO-style policies with M = 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["expected_calibration_error"]


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool | float], *, bins: int = 10
) -> float:
    """ECE in [0, 1] of `confidences` (each in [0, 1]) against `correct` (0/1); nan when there is none."""
    if len(confidences) != len(correct):
        raise ValueError(f"ECE got {len(confidences)} confidences for {len(correct)} outcomes.")
    if bins < 1:
        raise ValueError(f"ECE needs at least one bin, got {bins}.")
    if not confidences:
        return math.nan
    sums = [[0, 0.0, 0.0] for _ in range(bins)]  # count, summed confidence, summed correctness per bin
    for c, ok in zip(confidences, correct):
        c = float(c)
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"ECE confidences lie in [0, 1], got {c}.")
        m = max(math.ceil(round(c * bins, 9)) - 1, 0)  # (m/M, (m+1)/M] -> m; 0 -> bin 0 (round: 0.3 * 10)
        sums[m][0] += 1
        sums[m][1] += c
        sums[m][2] += float(ok)
    n = len(confidences)
    return sum(abs(acc - conf) / n for _, conf, acc in sums)
