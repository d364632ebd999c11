"""Text metrics: distinct-n and repetition by hand, the MAUVE-style frontier on known feature sets."""

import numpy as np
import pytest

from divlab.metrics.text import distinct_n, mauve_style, repetition_rate


def test_distinct_n_by_hand():
    seqs = ["abab", "abc"]
    # bigrams: ab ba ab | ab bc -> 5 total, unique {ab, ba, bc} = 3
    assert distinct_n(seqs, 2) == pytest.approx(3 / 5)
    assert distinct_n(seqs, 1) == pytest.approx(3 / 7)
    assert distinct_n(["a"], 2) == 0.0


def test_repetition_rate_by_hand():
    # "abcabc": 4-grams abca bcab cabc, no repeat; "aaaaa": aaaa aaaa -> 1 of 2 repeated
    assert repetition_rate(["abcabc"], 4) == 0.0
    assert repetition_rate(["aaaaa"], 4) == pytest.approx(0.5)
    assert repetition_rate(["abcabc", "aaaaa"], 4) == pytest.approx(0.25)


def test_mauve_style_identical_and_disjoint():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 4))
    same = mauve_style(a, a.copy(), n_clusters=8)
    far = mauve_style(a, rng.normal(size=(300, 4)) + 50.0, n_clusters=8)
    close = mauve_style(a, rng.normal(size=(300, 4)), n_clusters=8)
    assert same == pytest.approx(1.0, abs=1e-9)
    assert far < 0.05
    assert far < close <= 1.0
