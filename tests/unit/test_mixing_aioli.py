"""Aioli without a network: hand-computed pieces, and recovery of a planted A on a loss simulator
that follows the linear dynamic mixing law  L_{t+1} = L_t - A p_t  (one step on mixture p_t)."""

import math

import numpy as np
import pytest

from divlab.errors import ConfigError
from divlab.mixing.aioli import AioliMixer, exponentiated_gradient, normalise_A, smoothed_one_hot, unsmooth


def test_smoothing_inversion_by_hand():
    # k = 2, factor 0.625: W = [[.625, .375], [.375, .625]], det = 0.25, W^-1 = [[2.5, -1.5], [-1.5, 2.5]]
    D = np.array([[0.3, 0.1], [0.05, 0.2]])
    A = unsmooth(D, 0.625)
    assert np.allclose(A[0], [2.5 * 0.3 - 1.5 * 0.1, -1.5 * 0.3 + 2.5 * 0.1], atol=1e-12)  # [0.6, -0.2]
    assert np.allclose(A[1], [2.5 * 0.05 - 1.5 * 0.2, -1.5 * 0.05 + 2.5 * 0.2], atol=1e-12)
    assert np.allclose(unsmooth(D, 1.0), D)
    # k = 3, factor 0.5: rows of W are (0.5, 0.25, 0.25) and permutations; W a = d must hold
    D3 = np.arange(9.0).reshape(3, 3) / 10
    A3 = unsmooth(D3, 0.5)
    W = np.stack([smoothed_one_hot(j, 3, 0.5) for j in range(3)])
    assert np.allclose(W, [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    assert np.allclose(A3 @ W.T, D3, atol=1e-12)


def test_exponentiated_gradient_by_hand():
    A = np.array([[0.1, 0.2], [0.3, 0.4]])  # column sums 0.4, 0.6
    q = exponentiated_gradient(np.array([0.5, 0.5]), A, 0.5)
    assert q[0] == pytest.approx(1 / (1 + math.exp(0.5 * 0.2)), abs=1e-14)  # 0.5e^.2 / (0.5e^.2 + 0.5e^.3)
    p = np.array([0.2, 0.3, 0.5])
    A3 = np.array([[1.0, 0, 0], [0, 0, 2.0], [0, 1.0, 0]])  # column sums 1, 1, 2
    q3 = exponentiated_gradient(p, A3, 0.1)
    w = np.array([0.2 * math.exp(0.1), 0.3 * math.exp(0.1), 0.5 * math.exp(0.2)])
    assert np.allclose(q3, w / w.sum(), atol=1e-14)


def test_normalisation_by_hand():
    A = np.array([[0.6, -0.2], [0.1, 0.5]])
    assert np.allclose(normalise_A(A), np.array([[0.8, 0.0], [0.3, 0.7]]) / 1.8, atol=1e-14)
    assert np.allclose(normalise_A(np.array([[1.0, 3.0]])), [[0.25, 0.75]])


class Simulator:
    """The `task` interface a mixer uses, with losses that follow L <- L - A p + noise per step."""

    def __init__(self, A, *, noise=0.0, seed=0):
        self.A, self.k, self.noise = np.asarray(A, float), len(A), noise
        self.groups = [f"g{i}" for i in range(self.k)]
        self.L = np.full(self.k, 10.0)
        self.p = np.full(self.k, 1.0 / self.k)
        self.rng = np.random.default_rng(seed)
        self.history = []

    def set_proportions(self, p, *, reason):
        self.p = np.asarray(p, float)
        self.history.append((reason, self.p.copy()))

    def group_losses(self, split="val"):
        return self.L + self.noise * self.rng.standard_normal(self.k)

    def write_artifact(self, name, obj):
        pass

    def train_step(self):
        self.L = self.L - self.A @ self.p


class Trainer:
    global_step = 0


def simulate(mixer, task, steps):
    trainer = Trainer()
    mixer.on_train_start(trainer, task)
    for step in range(steps):
        trainer.global_step = step
        mixer.on_train_batch_start(trainer, task, None, step)
        task.train_step()
    return mixer


PLANTED = np.array(
    [[0.030, 0.004, 0.010], [0.002, 0.020, 0.001], [0.006, 0.003, 0.015]]
)  # A_ij: drop of group i's loss per step on group j


def test_aioli_recovers_a_planted_A_exactly_without_noise():
    lp_steps, factor = 3, 0.6
    mixer = AioliMixer(
        update_every=40,
        lp_rounds=2,
        lp_steps=lp_steps,
        eta=0.5,
        one_hot_factor=factor,
        ema=None,
        normalize=False,
    )
    simulate(mixer, Simulator(PLANTED), 120)
    assert len(mixer.rounds) == 3
    for r in mixer.rounds:
        # one probe of lp_steps steps on w^(j) drops L by lp_steps * A w^(j); unsmoothing gives lp_steps * A
        assert np.allclose(r["A_unsmoothed"], lp_steps * PLANTED, atol=1e-10)
        expected = exponentiated_gradient(np.asarray(r["p_before"]), lp_steps * PLANTED, 0.5)
        assert np.allclose(r["p_after"], expected, atol=1e-12)
    # group 0 gains most loss reduction from its own data and helps group 2: its proportion grows
    assert mixer.rounds[-1]["p_after"][0] > mixer.rounds[0]["p_before"][0]


def test_aioli_recovers_a_planted_A_under_evaluation_noise():
    mixer = AioliMixer(
        update_every=200, lp_rounds=30, lp_steps=2, eta=0.2, one_hot_factor=0.625, ema=None, normalize=True
    )
    simulate(mixer, Simulator(PLANTED, noise=2e-4, seed=1), 200)
    estimate = np.asarray(mixer.rounds[0]["A"])
    assert np.allclose(estimate, PLANTED / PLANTED.sum(), atol=0.01)  # normalised: sums to 1
    assert np.argmax(estimate.sum(axis=0)) == np.argmax(PLANTED.sum(axis=0))


def test_ema_and_schedule():
    mixer = AioliMixer(update_every=20, lp_rounds=1, lp_steps=2, eta=1.0, one_hot_factor=0.75, ema=0.5)
    simulate(mixer, Simulator(PLANTED[:2, :2]), 60)
    r0, r1 = mixer.rounds[0], mixer.rounds[1]
    assert np.allclose(r1["A_used"], 0.5 * np.asarray(r1["A"]) + 0.5 * np.asarray(r0["A_used"]))
    assert [r["step"] for r in mixer.rounds] == [4, 24, 44]  # k * lp_rounds * lp_steps = 4
    assert mixer.probe_steps == 3 * 4


def test_prior_is_trained_first():
    mixer = AioliMixer(
        update_every=10,
        lp_rounds=1,
        lp_steps=1,
        eta=1.0,
        one_hot_factor=1.0,
        ema=None,
        prior=[3, 1],
        prior_steps=5,
    )
    task = Simulator(PLANTED[:2, :2])
    simulate(mixer, task, 12)
    assert task.history[0][0] == "prior" and np.allclose(task.history[0][1], [0.75, 0.25])
    assert task.history[1][0].startswith("probe")  # the first probe is at step 5
    assert mixer.rounds[0]["step"] == 7 and mixer.rounds[0]["p_before"] == [0.75, 0.25]


def test_reference_update_restarts_from_uniform_with_ema_and_cumulative_compounds():
    # two rounds of hand-made drops D (k = 2, factor 1: A = D), normalised, EMA 0.5, eta 2.
    D0, D1 = np.array([[0.3, 0.1], [0.0, 0.2]]), np.array([[0.1, 0.1], [0.1, 0.3]])
    A0, A1 = D0 / 0.6, D1 / 0.6  # both sum to 0.6 and are non-negative
    ema1 = 0.5 * A1 + 0.5 * A0  # the reference's EMA of the second round
    # colsum A0 = (0.5, 0.5) (= (0.3 / 0.6, 0.3 / 0.6)); colsum ema1 = 0.5 (0.2, 0.4) / 0.6 + 0.5 (0.3, 0.3) / 0.6
    assert np.allclose(ema1.sum(0), [0.25 / 0.6, 0.35 / 0.6])
    ref = AioliMixer(
        update_every=20, lp_rounds=1, lp_steps=1, eta=2.0, one_hot_factor=1.0, ema=0.5, prior=[9, 1]
    )
    ref.p_dyn = [0.9, 0.1]  # a prior: the reference still restarts
    p0 = ref.update(D0, step=0)
    assert np.allclose(p0, [0.5, 0.5])  # exp(2 * 0.5) on both groups
    p1 = ref.update(D1, step=20)
    w = np.exp(2.0 * np.array([0.25, 0.35]) / 0.6)  # uniform * exp(eta colsum A_ema), not p0 * ...
    assert np.allclose(p1, w / w.sum(), atol=1e-14)
    cum = AioliMixer(
        update_every=20, lp_rounds=1, lp_steps=1, eta=2.0, one_hot_factor=1.0, ema=0.5, update="cumulative"
    )
    cum.p_dyn = [0.9, 0.1]
    c0 = cum.update(D0, step=0)
    assert np.allclose(c0, [0.9, 0.1])  # Alg. 1 from the prior, equal column sums
    c1 = cum.update(D1, step=20)
    v = np.array([0.9, 0.1]) * w
    assert np.allclose(c1, v / v.sum(), atol=1e-14)
    # without EMA the reference compounds after its uniform first round
    no_ema = AioliMixer(update_every=20, lp_rounds=1, lp_steps=1, eta=2.0, one_hot_factor=1.0, ema=None)
    no_ema.p_dyn = [0.9, 0.1]
    assert np.allclose(no_ema.update(D0, step=0), [0.5, 0.5])
    u = np.array([0.5, 0.5]) * np.exp(2.0 * A1.sum(0))
    assert np.allclose(no_ema.update(D1, step=20), u / u.sum(), atol=1e-14)
    with pytest.raises(ConfigError, match="mixer.update"):
        AioliMixer(update="alg2")
