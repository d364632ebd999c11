"""pass@k: the probability that at least one of k samples is correct, estimated without bias from n >= k.

Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", arXiv:2107.03374, Eq. 1): with n samples
of a problem of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)        (1 when n - c < k)

averaged over problems. C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i) is the product the paper
evaluates to avoid large binomials (its Fig. 3); `pass_at_k` computes it that way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mean_pass_at_k", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct among n samples (0 <= c <= n, 1 <= k <= n)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(n: int, correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems, each with n samples and correct[j] of them correct."""
    if len(correct) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct]))
