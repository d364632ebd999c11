"""MixtureSampler: empirical group proportions match p (chi-square), on one process and on two
simulated DDP ranks (same group stream, disjoint examples), and after p changes."""

import numpy as np
import pytest
from scipy.stats import chisquare

from divlab.data.mixture import MixtureSampler, check_proportions, group_windows
from divlab.errors import ConfigError

LEVEL = 0.001  # chi-square goodness of fit: reject "the draws follow p" when the p-value < 0.001
SIZES = [500, 800, 300]


def counts(samplers, steps, k):
    c = np.zeros(k)
    for step in steps:
        for s in samplers:
            groups, _ = s.indices(step)
            c += np.bincount(groups, minlength=k)
    return c


def test_single_process_proportions_match_p():
    p = np.array([0.2, 0.3, 0.5])
    s = MixtureSampler(group_sizes=SIZES, batch_size=16, seed=3, proportions=p)
    c = counts([s], range(1500), 3)  # 24,000 draws
    assert chisquare(c, c.sum() * p).pvalue > LEVEL
    assert chisquare(c, c.sum() * np.full(3, 1 / 3)).pvalue < 1e-6  # and the test can tell p from uniform


def test_two_ranks_share_groups_and_draw_disjoint_examples():
    p = [0.6, 0.1, 0.3]
    ranks = [
        MixtureSampler(group_sizes=SIZES, batch_size=8, seed=5, rank=r, world_size=2, proportions=p)
        for r in (0, 1)
    ]
    for step in range(200):
        assert np.array_equal(ranks[0].global_groups(step), ranks[1].global_groups(step))
        (g0, r0), (g1, r1) = ranks[0].indices(step), ranks[1].indices(step)
        assert np.array_equal(np.concatenate([g0, g1]), ranks[0].global_groups(step))
        assert not set(zip(g0.tolist(), r0.tolist())) & set(zip(g1.tolist(), r1.tolist()))
        assert all(0 <= r < SIZES[g] for g, r in zip(np.concatenate([g0, g1]), np.concatenate([r0, r1])))
    c = counts(ranks, range(1500), 3)
    assert chisquare(c, c.sum() * np.asarray(p)).pvalue > LEVEL
    # each rank alone also follows p (its slots are a fixed part of an i.i.d. global batch)
    c0 = counts(ranks[:1], range(1500), 3)
    assert chisquare(c0, c0.sum() * np.asarray(p)).pvalue > LEVEL


def test_changed_proportions_apply_from_the_next_step_on_every_rank():
    ranks = [MixtureSampler(group_sizes=SIZES, batch_size=8, seed=1, rank=r, world_size=2) for r in (0, 1)]
    first = counts(ranks, range(800), 3)
    assert chisquare(first, first.sum() * np.full(3, 1 / 3)).pvalue > LEVEL
    new_p = np.array([0.05, 0.15, 0.8])
    for s in ranks:
        s.set_proportions(new_p)
    second = counts(ranks, range(800, 1600), 3)
    assert chisquare(second, second.sum() * new_p).pvalue > LEVEL


def test_batches_are_a_function_of_seed_step_and_p():
    a = MixtureSampler(group_sizes=SIZES, batch_size=8, seed=2, proportions=[0.5, 0.25, 0.25])
    b = MixtureSampler(group_sizes=SIZES, batch_size=8, seed=2, proportions=[0.5, 0.25, 0.25])
    for step in (0, 7, 123):
        assert all(np.array_equal(x, y) for x, y in zip(a.indices(step), b.indices(step)))


def test_windows_split_in_order_without_overlap():
    data = bytes(range(256)) * 10  # 2560 bytes
    s = group_windows(data, name="g", context_length=15, val_windows=4, test_windows=3)
    assert s.train.shape[1] == s.val.shape[1] == 16 and len(s.val) == 4 and len(s.test) == 3
    assert len(s.train) == 2560 // 16 - 7
    flat = np.concatenate([s.train.flatten(), s.val.flatten(), s.test.flatten()])
    assert np.array_equal(flat, np.frombuffer(data, np.uint8)[: len(flat)])


@pytest.mark.parametrize("p", [[0.5, 0.6, -0.1], [0.5, 0.5], [0.2, 0.2, 0.2]])
def test_bad_proportions_fail(p):
    with pytest.raises(ConfigError, match="non-negative numbers summing to 1"):
        check_proportions(p, 3)


def test_too_little_text_fails_with_the_key():
    with pytest.raises(ConfigError, match="max_chars"):
        group_windows(b"x" * 100, name="tiny", context_length=15, val_windows=4, test_windows=4)
