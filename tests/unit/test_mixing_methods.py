"""The other mixers' math without training: Dirichlet cover, skills graph and Skill-It weights,
the static mixing-law fit (planted law), DoReMi's domain-weight update, static weights."""

import math

import numpy as np
import pytest
import torch

from divlab.errors import ConfigError
from divlab.mixing.dml import fit_law, law, optimal_mixture
from divlab.mixing.doremi import DoReMiMixer
from divlab.mixing.grid import dirichlet_cover
from divlab.mixing.skillit import skillit_proportions, skills_graph
from divlab.mixing.static import StaticMixer
from divlab.tasks.lm import lm_loss


def test_dirichlet_cover_is_on_the_simplex_spread_and_fixed_by_its_seed():
    cover = dirichlet_cover(3, 6, seed=0)
    assert cover.shape == (6, 3) and np.allclose(cover.sum(axis=1), 1.0) and np.all(cover >= 0)
    assert np.array_equal(cover, dirichlet_cover(3, 6, seed=0))
    assert not np.array_equal(cover, dirichlet_cover(3, 6, seed=1))
    from scipy.spatial.distance import pdist

    plain = np.random.default_rng(0).dirichlet(np.full(3, 1.5), size=6)  # merging spreads the points
    assert pdist(cover).min() > pdist(plain).min()


def test_skills_graph_and_weights_by_hand():
    start = np.array([[5.0, 4.0], [5.0, 4.0]])
    end = np.array([[2.5, 3.0], [4.0, 1.0]])
    A = skills_graph(start, end)
    assert np.allclose(A, [[0.5, 0.25], [0.2, 0.75]])
    p = skillit_proportions(A, np.array([2.0, 1.0]), 0.2)  # logits 0.2 * (1.25, 1.15)
    assert p[0] == pytest.approx(1 / (1 + math.exp(0.2 * (1.15 - 1.25))), abs=1e-14)


def test_mixing_law_fit_recovers_a_planted_law_and_its_minimiser():
    truth = [{"c": 1.0, "b": 2.0, "t": [-2.0, -0.5]}, {"c": 1.5, "b": 1.0, "t": [-0.2, -1.5]}]
    P = dirichlet_cover(2, 6, seed=0)
    L = np.stack([law(P, f["c"], f["b"], np.asarray(f["t"])) for f in truth], axis=1)
    fits = fit_law(P, L)
    grid = np.linspace(0, 1, 2001)[:, None] * np.array([1.0, -1.0]) + np.array([0.0, 1.0])
    for f, g in zip(fits, truth):
        assert np.allclose(
            law(grid, f["c"], f["b"], np.asarray(f["t"])),
            law(grid, g["c"], g["b"], np.asarray(g["t"])),
            atol=1e-5,
        )
    mean_true = np.mean([law(grid, g["c"], g["b"], np.asarray(g["t"])) for g in truth], axis=0)
    assert optimal_mixture(fits)[0] == pytest.approx(grid[np.argmin(mean_true), 0], abs=2e-3)
    with pytest.raises(ConfigError, match="points"):
        fit_law(P[:3], L[:3])


def test_doremi_weight_update_by_hand():
    class Task:
        k = 2
        loss_fn = staticmethod(lm_loss)

        class trainer:
            world_size = 1

    mixer = DoReMiMixer(role="proxy", mu=0.5, smoothing=0.1, reference="unused.ckpt")

    class Uniform(torch.nn.Module):  # uniform over 3 tokens: loss log 3
        def forward(self, x):
            return torch.zeros(*x.shape, 3)

    mixer.reference_model = Uniform()
    mixer.alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
    mixer.alpha_sum, mixer.scores = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    x = torch.zeros(2, 4, dtype=torch.long)
    y = torch.zeros(2, 4, dtype=torch.long)
    groups = torch.tensor([0, 0])  # only group 0 in this batch
    model_losses = torch.tensor([math.log(3) + 0.4, 9.0])
    w = mixer.loss_weights(Task(), model_losses, x, y, groups)
    # excess = (0.4, previous score 0) -> alpha ∝ (0.5 e^{0.2}, 0.5) -> (1 - 0.1) alpha + 0.1 / 2
    a0 = math.exp(0.2) / (math.exp(0.2) + 1)
    assert np.allclose(w.numpy(), [0.9 * a0 + 0.05, 0.9 * (1 - a0) + 0.05], atol=1e-6)
    assert mixer.updates == 1 and np.allclose(mixer.alpha_sum.numpy(), w.numpy(), atol=1e-6)


def test_doremi_per_token_clipping_is_the_papers_form_by_hand():
    class Task:
        k = 2

        loss_fn = staticmethod(lm_loss)  # the task's per-token loss (float32)

        class trainer:
            world_size = 1

    class Fixed(torch.nn.Module):  # logits that put probability e^a / (e^a + 2) on token 0
        def __init__(self, a):
            super().__init__()
            self.a = torch.tensor(a, dtype=torch.float64)

        def forward(self, x):
            out = torch.zeros(*x.shape, 3, dtype=torch.float64)
            out[..., 0] = self.a
            return out

    # two windows of group 0, 2 tokens each; per-token loss -log p(y): target 0 -> log(e^a + 2) - a,
    # target 1 -> log(e^a + 2). Proxy a = (1, -1) per window, reference a = 0 (uniform: log 3 everywhere).
    x = torch.zeros(2, 2, dtype=torch.long)
    y = torch.tensor([[0, 1], [0, 1]])
    proxy = Fixed([[1.0, 1.0], [-1.0, -1.0]])
    Task.model = proxy
    lp = lambda a, t: math.log(math.exp(a) + 2) - (a if t == 0 else 0.0)  # noqa: E731
    tokens = [lp(1, 0), lp(1, 1), lp(-1, 0), lp(-1, 1)]
    per_token = sum(max(t - math.log(3), 0.0) for t in tokens) / 4  # clip, then average
    group_mean = max(sum(tokens) / 4 - math.log(3), 0.0)  # average, then clip
    assert per_token > group_mean + 0.1  # the two forms differ here
    groups = torch.tensor([0, 0])
    for clip, excess in (("token", per_token), ("group", group_mean)):
        mixer = DoReMiMixer(role="proxy", mu=1.0, smoothing=0.0, reference="unused.ckpt", clip=clip)
        mixer.reference_model = Fixed([[0.0, 0.0], [0.0, 0.0]])
        mixer.alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
        mixer.alpha_sum, mixer.scores = (
            torch.zeros(2, dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
        )
        model_losses = torch.tensor([sum(tokens) / 4, 9.0], dtype=torch.float64)
        w = mixer.loss_weights(Task(), model_losses, x, y, groups)
        assert math.isclose(float(mixer.scores[0]), excess, rel_tol=1e-6)
        assert np.allclose(w.numpy(), [math.exp(excess) / (math.exp(excess) + 1), 1 / (math.exp(excess) + 1)])
    with pytest.raises(ConfigError, match="mixer.clip"):
        DoReMiMixer(role="final", clip="sample")


def test_static_weights_are_normalised_and_checked():
    assert np.allclose(StaticMixer(weights=[1, 3]).initial_proportions(2), [0.25, 0.75])
    with pytest.raises(ConfigError, match="mixer.weights"):
        StaticMixer(weights=[1, -1]).initial_proportions(2)
    with pytest.raises(ConfigError, match="mixer.weights"):
        StaticMixer(weights=[1, 1, 1]).initial_proportions(2)
