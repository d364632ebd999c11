"""f-distill pieces: h(r) from the divergence library, the two-stage normalisation, ratio clipping,
the pseudo-target gradient and the SiD identity."""

import pytest
import torch

from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.objectives.fdistill import (
    OBJECTIVES,
    RatioNormalizer,
    density_ratio,
    generator_loss,
    pseudo_target_loss,
    sid_loss,
)

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "squared_hellinger", "softened_reverse_kl", "jeffreys")


def sigmas(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_weights_come_from_the_library_and_have_mean_one(name):
    div = get_divergence(name)
    g = torch.Generator().manual_seed(1)
    r = density_ratio(torch.randn(512, 1, generator=g) * 2)
    sigma = sigmas(512)
    norm = RatioNormalizer(num_bins=10, log_sigma_min=-4.8, log_sigma_max=2.4)
    h = norm(r, sigma, div)
    # stage 1 by hand: r over its per-bin batch mean; stage 2: h(r) over its batch mean
    idx = norm.bin_index(sigma)
    bin_mean = torch.stack([r[idx == b].mean() if (idx == b).any() else torch.tensor(1.0) for b in range(10)])
    r1 = r / (bin_mean[idx] + 1e-6)
    expect = div.weight(r1) / (div.weight(r1).mean() + 1e-6)
    assert torch.allclose(h, expect, rtol=1e-5)
    assert abs(float(h.mean()) - 1.0) < 1e-5
    for b in idx.unique():  # stage 1: mean normalised ratio 1 per bin
        assert abs(float(r1[idx == b].mean()) - 1.0) < 1e-4


def test_the_normaliser_calls_the_divergence_weight_and_nothing_else():
    calls = []

    class Spy:
        def weight(self, r):
            calls.append(r.clone())
            return r**3  # not any library h: proves it is used as given

    r, sigma = torch.tensor([0.5, 2.0, 4.0]), torch.tensor([0.1, 0.1, 0.1])
    h = RatioNormalizer(num_bins=1)(r, sigma, Spy())
    r1 = r / r.mean()
    assert len(calls) == 1 and torch.allclose(calls[0], r1, rtol=1e-5)
    assert torch.allclose(h, r1**3 / (r1**3).mean(), rtol=1e-5)


def test_density_ratio_is_clamped_then_clipped():
    r = density_ratio(torch.tensor([[-100.0], [0.0], [1.0], [100.0]]))
    assert torch.allclose(r, torch.tensor([0.1, 1.0, torch.e, 20.0]))


def test_running_mean_per_bin_is_an_ema():
    norm = RatioNormalizer(num_bins=1, ema_rate=0.9)
    norm.normalise_ratio(torch.tensor([3.0, 5.0]), torch.tensor([1.0, 1.0]))
    assert torch.isclose(norm.bins[0], torch.tensor(0.9 * 1.0 + 0.1 * 4.0))
    with pytest.raises(ConfigError):
        RatioNormalizer(ema_rate=1.0)


def test_pseudo_target_loss_has_the_given_gradient():
    x = torch.randn(8, 2, requires_grad=True)
    grad = torch.randn(8, 2)
    (g,) = torch.autograd.grad(pseudo_target_loss(x, grad), x)
    assert torch.allclose(g, grad / 16)  # default "mean": over batch and dims (8 x 2)
    (g,) = torch.autograd.grad(pseudo_target_loss(x, grad, reduction="sum"), x)
    assert torch.allclose(g, grad / 8)  # "sum" over dims, mean over the batch


def test_fdistill_loss_equals_fastgens_reduction_by_hand():
    # FastGen's variational_score_distillation_loss, written out in float64 on a (2, 3) batch:
    # w = h / (mean_dims |x - D_p| + 1e-6); target = x - w (D_q - D_p); loss = 0.5 * mean_{b,d} (x - target)^2
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=torch.float64, requires_grad=True)
    fp = torch.tensor([[1.0, -0.5, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    fq = torch.tensor([[0.0, 0.5, 2.0], [2.0, -1.0, -1.0]], dtype=torch.float64)
    h = torch.tensor([0.5, 1.5], dtype=torch.float64)
    # mean_dims |x - fp| = (0.5 + 0.5 + 1.0)/3 = 2/3 and (0.5 + 1.0 + 0.5)/3 = 2/3 -> w = 1.5 h (less 1e-6)
    w = h / (2 / 3 + 1e-6)
    vsd = torch.stack([w[0] * (fq[0] - fp[0]), w[1] * (fq[1] - fp[1])])
    expect = 0.5 * (vsd**2).sum() / 6  # 0.5 * mse, mean over the 6 elements
    loss = generator_loss("fdistill", x_g=x, teacher_x0=fp, fake_x0=fq, h=h)
    assert torch.allclose(loss, expect, rtol=1e-12)
    # by hand: vsd rows (0.75 * (-1, 1, 1), 2.25 * (1, -2, -1)); squares sum 3 * 0.5625 + 6 * 5.0625 = 32.0625
    assert abs(float(loss.detach()) - 0.5 * 32.0625 / 6 * (2 / 3 / (2 / 3 + 1e-6)) ** 2) < 1e-9
    (g,) = torch.autograd.grad(loss, x)
    assert torch.allclose(g, vsd / 6)  # d/dx = vsd / (B D)
    summed = generator_loss("fdistill", x_g=x, teacher_x0=fp, fake_x0=fq, h=h, reduction="sum")
    assert torch.allclose(summed, 3 * loss)  # the option: D = 3 times the reference
    with pytest.raises(ConfigError, match="one_step.reduction"):
        generator_loss("fdistill", x_g=x, teacher_x0=fp, fake_x0=fq, h=h, reduction="max")


def test_uni_instruct_paper_form_has_scalar_weights_and_h_weighted_is_the_variant():
    g = torch.Generator().manual_seed(3)
    x, fp, fq = (torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(3))
    h = torch.tensor([0.2, 0.8, 1.0, 2.0], dtype=torch.float64)
    w = 1 / ((x - fp).abs().mean(1) + 1e-6)  # DMD's per-sample normaliser
    d = fp - fq
    di = 0.5 * ((w[:, None] * (fq - fp)) ** 2).mean()  # DI pseudo-target loss (value), mean reduction
    sim = (w * ((1 - 1.2) * d**2 + d * (fq - x)).mean(1)).mean()
    paper = generator_loss(
        "uni_instruct", x_g=x, teacher_x0=fp, fake_x0=fq, h=h, di_weight=0.3, sim_weight=2.0
    )
    assert torch.allclose(paper, 0.3 * di + 2.0 * sim)
    # the paper form ignores h: any other h gives the same loss
    other = generator_loss(
        "uni_instruct", x_g=x, teacher_x0=fp, fake_x0=fq, h=h.flip(0), di_weight=0.3, sim_weight=2.0
    )
    assert torch.allclose(paper, other)
    di_h = 0.5 * (((h * w)[:, None] * (fq - fp)) ** 2).mean()
    sim_h = (h * w * ((1 - 1.2) * d**2 + d * (fq - x)).mean(1)).mean()
    variant = generator_loss(
        "uni_instruct",
        x_g=x,
        teacher_x0=fp,
        fake_x0=fq,
        h=h,
        di_weight=0.3,
        sim_weight=2.0,
        uni_instruct_form="h_weighted",
    )
    assert torch.allclose(variant, 0.3 * di_h + 2.0 * sim_h)
    with pytest.raises(ConfigError, match="uni_instruct_form"):
        generator_loss("uni_instruct", x_g=x, teacher_x0=fp, fake_x0=fq, h=h, uni_instruct_form="dmd")


def test_sid_loss_identity():
    x, fp, fq = (torch.randn(5, 2, dtype=torch.float64) for _ in range(3))
    alpha = 1.2
    d = fp - fq
    # (1 - a)|d|^2 + d.(fq - x) == d.(fp - x) - a|d|^2, per sample, times DMD's 1/mean|x - fp|
    w = 1 / ((x - fp).abs().mean(1) + 1e-6)
    expect = (w * ((d * (fp - x)).sum(1) - alpha * (d**2).sum(1))).mean()
    assert torch.allclose(sid_loss(x, fp, fq, alpha=alpha, reduction="sum"), expect)
    assert torch.allclose(sid_loss(x, fp, fq, alpha=alpha), expect / 2)  # default: mean over the 2 dims


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_moves_samples_toward_the_teacher(objective):
    # teacher denoiser pulls to +1, fake score to -1: a small step along -grad must reduce |x_g - D_p|
    x = torch.zeros(16, 2, requires_grad=True)
    teacher_x0, fake_x0 = torch.ones(16, 2), -torch.ones(16, 2)
    loss = generator_loss(objective, x_g=x, teacher_x0=teacher_x0, fake_x0=fake_x0, h=torch.ones(16))
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and (g < 0).all()
    with pytest.raises(ConfigError):
        generator_loss("dmd3", x_g=x, teacher_x0=teacher_x0, fake_x0=fake_x0, h=None)
