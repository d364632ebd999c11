"""ROUGE-L (percent) against hand-computed LCS scores and an independent LCS; exact match on first integers."""

import math
import random

import pytest

from divlab.metrics.generation import exact_match, final_integer, rouge_l


def lcs_f(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F from a plain dynamic-programming LCS (no stemming: the test words have no suffixes)."""
    table = [[0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
    for i, a in enumerate(pred):
        for j, b in enumerate(ref):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def test_rouge_l_matches_hand_computed_lcs():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4; P = R = 4/6 -> F = 2/3
    assert rouge_l(["the cat sat on the mat"], ["the cat lay on a mat"]) == pytest.approx(200 / 3)
    # LCS = "the fox" = 2; P = 2/4, R = 2/3 -> F = 2PR/(P+R) = 4/7
    assert rouge_l(["The quick fox jumps."], ["the fox runs"]) == pytest.approx(400 / 7)
    both = rouge_l(
        ["the cat sat on the mat", "The quick fox jumps."], ["the cat lay on a mat", "the fox runs"]
    )
    assert both == pytest.approx((200 / 3 + 400 / 7) / 2)  # the mean over pairs, in percent


def test_rouge_l_edge_cases():
    assert rouge_l(["Paris is the capital."], ["Paris is the capital."]) == pytest.approx(100.0)
    assert rouge_l(["cats running"], ["cat runs"]) == pytest.approx(100.0)  # Porter stemming, as published
    assert rouge_l(["", "   "], ["a reference", "another one"]) == 0.0  # empty prediction = 0
    assert rouge_l(["blue sky"], ["green grass"]) == 0.0
    assert math.isnan(rouge_l([], []))
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_rouge_l_matches_an_independent_lcs():
    rng = random.Random(0)
    words = ["ab", "cd", "ef", "gh", "ij"]
    preds = [[rng.choice(words) for _ in range(rng.randint(1, 9))] for _ in range(40)]
    refs = [[rng.choice(words) for _ in range(rng.randint(1, 9))] for _ in range(40)]
    expected = 100 * sum(lcs_f(p, r) for p, r in zip(preds, refs)) / 40
    assert rouge_l([" ".join(p) for p in preds], [" ".join(r) for r in refs]) == pytest.approx(expected)


def test_exact_match_reads_the_final_integer():
    assert (
        final_integer("Tom has 5 apples and gets 14: 5 + 14 = 19.") == 19 and final_integer("It is -3.") == -3
    )
    assert final_integer("no number") is None
    predictions = ["5 + 14 = 19 apples.", "It is 13 or 12", "I do not know", "-3 left", "6 each, not 7.", "7"]
    answers = ["19", "13", "5", None, 6, "7"]
    assert exact_match(predictions, answers) == pytest.approx(2 / 5)  # the None row is skipped
    assert math.isnan(exact_match(["1", "2"], [None, None]))
    with pytest.raises(ValueError, match="1 predictions for 2 answers"):
        exact_match(["1"], ["1", "2"])
