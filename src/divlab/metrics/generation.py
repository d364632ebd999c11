"""Metrics of generated responses against references: ROUGE-L and exact match (offline).

- `rouge_l`: the mean ROUGE-L F-measure (Lin 2004), in PERCENT (0..100), computed by the `rouge_score`
  package with Porter stemming, as DistiLLM (Ko et al. 2024) and MiniLLM (Gu et al. 2024) report it:
  with LCS the longest common subsequence of the two token lists, P = LCS / |prediction|,
  R = LCS / |reference|, F = 2PR / (P + R). An empty prediction scores 0.
- `exact_match`: the FRACTION (0..1) of predictions whose final integer equals the answer (the last number
  written, as lm-evaluation-harness's GSM8K "flexible-extract" reads it: "5 + 14 = 19 apples." gives 19).

distinct-n and repetition rates of generations are in divlab.metrics.text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

from divlab.errors import ConfigError

__all__ = ["exact_match", "final_integer", "rouge_l"]

INTEGER = re.compile(r"-?\d+")


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(
            "ROUGE-L needs the package rouge-score; install the hf extra (pip install -e '.[hf]')."
        ) from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure x 100 over pairs (nan when there is none)."""
    if len(predictions) != len(references):
        raise ValueError(f"rouge_l got {len(predictions)} predictions for {len(references)} references.")
    if not predictions:
        return math.nan
    scorer = _scorer()
    scores = [
        scorer.score(ref, pred)["rougeL"].fmeasure if pred.strip() else 0.0  # score(target, prediction)
        for pred, ref in zip(predictions, references, strict=True)
    ]
    return 100.0 * sum(scores) / len(scores)


def final_integer(text: str) -> int | None:
    """The last integer written in `text` ("-3" counts as negative), None when there is none."""
    found = INTEGER.findall(text)
    return int(found[-1]) if found else None


def exact_match(predictions: Sequence[str], answers: Sequence[str | int | None]) -> float:
    """Fraction of predictions whose final integer equals the answer; rows whose answer is None are skipped
    (nan when none is left). A prediction without an integer counts as wrong."""
    if len(predictions) != len(answers):
        raise ValueError(f"exact_match got {len(predictions)} predictions for {len(answers)} answers.")
    hits = [
        final_integer(pred) == int(answer)
        for pred, answer in zip(predictions, answers, strict=True)
        if answer is not None
    ]
    return sum(hits) / len(hits) if hits else math.nan
