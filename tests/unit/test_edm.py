"""EDM preconditioning, loss weight, noise schedule and samplers (Karras et al. 2022), and the
analytic Gaussian-mixture teacher (exact score of the noised mixture)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from divlab.data.toy2d import grid25_mixture, ring8_mixture
from divlab.errors import ConfigError
from divlab.models.denoiser_mlp import DenoiserMLP
from divlab.models.edm import (
    EDMLoss,
    EDMPrecond,
    c_out,
    c_skip,
    edm_loss_weight,
    euler_sampler,
    heun_sampler,
    karras_sigmas,
    sample_sigma,
    sampler_nfe,
    score_from_denoiser,
)
from divlab.models.gmm_teacher import GMMTeacher

SD = 0.7


def test_preconditioning_closed_forms():
    s = torch.tensor([0.002, 0.1, 0.7, 3.0, 80.0], dtype=torch.float64)
    # Table 1 / Appendix B.6: the network input c_in x_sigma has unit variance
    # effective training target has unit variance: (1 - c_skip)^2 sd^2 + c_skip^2 s^2 = c_out^2
    assert torch.allclose((1 - c_skip(s, SD)) ** 2 * SD**2 + c_skip(s, SD) ** 2 * s**2, c_out(s, SD) ** 2)
    assert torch.allclose(edm_loss_weight(s, SD), 1 / c_out(s, SD) ** 2)
    assert torch.allclose(edm_loss_weight(s, SD), (s**2 + SD**2) / (s * SD) ** 2)


class Const(torch.nn.Module):
    def forward(self, x, c_noise):
        return torch.full_like(x, 5.0)


def test_denoiser_is_identity_as_sigma_goes_to_zero_and_mean_guess_at_large_sigma():
    D = EDMPrecond(Const(), sigma_data=SD).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.allclose(D(x, 1e-8), x, atol=1e-7)
    # sigma -> inf: c_skip -> 0, c_out -> sd: D -> sd * F
    assert torch.allclose(D(x, 1e8), torch.full_like(x, 5.0 * SD), atol=1e-6)


def test_sigma_sampler_and_schedule():
    s = sample_sigma(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(s.log().mean() + 1.2) < 0.01 and abs(s.log().std() - 1.2) < 0.01
    sig = karras_sigmas(18)
    assert len(sig) == 19 and sig[-1] == 0
    assert math.isclose(sig[0], 80.0) and math.isclose(sig[-2], 0.002, rel_tol=1e-9)
    assert (sig[:-1].diff() < 0).all()
    i = 5  # eq. 5 by hand
    expect = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(sig[i], expect, rel_tol=1e-12)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    assert sampler_nfe("heun", 18) == 35 and sampler_nfe("euler", 4) == 4
    with pytest.raises(ConfigError):
        karras_sigmas(0)


def test_edm_loss_is_weighted_mse():
    D = EDMPrecond(DenoiserMLP(dim=2, width=16, depth=1), sigma_data=SD)
    x0 = torch.randn(8, 2)
    sigma = torch.full((8,), 0.5)
    torch.manual_seed(0)
    loss = EDMLoss(sigma_data=SD)(D, x0, sigma=sigma)
    torch.manual_seed(0)
    noisy = x0 + 0.5 * torch.randn_like(x0)
    expect = (0.25 + SD**2) / (0.25 * SD**2) * ((D(noisy, sigma) - x0) ** 2).mean(1)
    assert torch.allclose(loss, expect)


def test_mixture_log_density_matches_scipy_and_score_matches_autograd():
    m = grid25_mixture()
    teacher = GMMTeacher.from_mixture(m)
    x = torch.randn(16, 2, dtype=torch.float64) * 2
    for sigma in (0.0, 0.05, 1.0, 30.0):
        ref = torch.tensor(
            logsumexp(
                np.stack(
                    [
                        math.log(w) + multivariate_normal.logpdf(x.numpy(), mu.numpy(), s**2 + sigma**2)
                        for w, mu, s in zip(m.weights.tolist(), m.means, m.stds.tolist())
                    ]
                ),
                axis=0,
            )
        )
        if sigma > 0:
            assert torch.allclose(teacher.log_density(x, sigma), ref, rtol=1e-8, atol=1e-8)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(teacher.log_density(xr, sigma).sum(), xr)
        assert torch.allclose(teacher.score(x, sigma), grad, rtol=1e-8, atol=1e-8)
        if sigma > 0:
            assert torch.allclose(
                score_from_denoiser(teacher(x, sigma), x, sigma), grad, rtol=1e-6, atol=1e-8
            )


def test_heun_with_exact_teacher_reproduces_the_mixture():
    m = ring8_mixture()
    teacher = GMMTeacher.from_mixture(m)
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = heun_sampler(teacher, z, num_steps=18)
    nearest = torch.cdist(x, m.means).min(1).values
    assert (nearest < 3 * 0.1).float().mean() > 0.97  # samples sit on the modes
    one = euler_sampler(teacher, z, num_steps=1)  # one Euler step = D(sigma_max z; sigma_max)
    assert torch.allclose(one, teacher(80.0 * z, 80.0))
    assert one.norm(dim=1).max() < 0.2  # ... which is the mixture mean
