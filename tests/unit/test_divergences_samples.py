"""Sample divergences: closed forms for Gaussians, scipy and POT references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.stats import energy_distance as scipy_energy_distance

from divlab.divergences import get_divergence, sinkhorn_cost


def _gauss(n, d, mean=0.0, std=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, d, generator=g, dtype=dtype)


# ----------------------------------------------------------------------------- MMD


def test_mmd_unbiased_matches_hand_computation():
    x, y = _gauss(7, 2, seed=1), _gauss(9, 2, mean=0.5, seed=2)
    bws = (0.5, 2.0)

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1).numpy()
        return sum(np.exp(-d2 / (2 * s * s)) for s in bws)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 72 - 2 * kxy.mean()
    assert float(get_divergence("mmd", bandwidths=bws)(x, y)) == pytest.approx(expected, rel=1e-10)


def test_mmd_gaussian_closed_form():
    """RBF MMD^2 between N(m1, s^2 I) and N(m2, s^2 I) in d dims:
    2 (sig^2 / (sig^2 + 2 s^2))^(d/2) (1 - exp(-|m1 - m2|^2 / (2 (sig^2 + 2 s^2))))."""
    d, sig = 2, 1.0
    x = _gauss(1500, d, seed=3)
    y = _gauss(1500, d, mean=torch.tensor([1.0, 0.0], dtype=torch.float64), seed=4)
    c = sig**2 / (sig**2 + 2)
    expected = 2 * c ** (d / 2) * (1 - math.exp(-1.0 / (2 * (sig**2 + 2))))
    got = float(get_divergence("mmd", bandwidths=[sig])(x, y))
    assert got == pytest.approx(expected, abs=0.01)
    same = float(get_divergence("mmd", bandwidths=[sig])(x, _gauss(1500, d, seed=5)))
    assert abs(same) < 0.005  # unbiased: zero in expectation


# ----------------------------------------------------------------------------- energy distance


def test_energy_distance_v_statistic_is_scipy_squared():
    x, y = _gauss(40, 1, seed=6), _gauss(55, 1, mean=0.7, seed=7)
    ref = scipy_energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert float(get_divergence("energy_distance", unbiased=False)(x, y)) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_gaussian_closed_form():
    """1-D N(0,1) vs N(mu,1): 2 E|X-Y| - 2 E|X-X'| with X-Y ~ N(-mu, 2), X-X' ~ N(0, 2)."""
    mu = 1.0
    sd = math.sqrt(2.0)
    e_xy = sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2)) + mu * math.erf(
        mu / (sd * math.sqrt(2))
    )
    e_xx = sd * math.sqrt(2 / math.pi)
    expected = 2 * e_xy - 2 * e_xx
    got = float(get_divergence("energy_distance")(_gauss(2000, 1, seed=8), _gauss(2000, 1, mean=mu, seed=9)))
    assert got == pytest.approx(expected, abs=0.03)


# ----------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_wasserstein_1d_is_exact_w_p():
    x, y = _gauss(37, 1, seed=10), _gauss(23, 1, mean=0.4, std=2.0, seed=11)  # unequal sizes
    for p in (1.0, 2.0, 3.0):
        ref = ot.wasserstein_1d(x[:, 0].numpy(), y[:, 0].numpy(), p=p)
        got = float(get_divergence("sliced_wasserstein", p=p)(x, y))
        assert got == pytest.approx(float(ref), rel=1e-10)


def test_sliced_wasserstein_gaussian_w2_closed_form_and_translation():
    x, y = _gauss(4000, 1, seed=12), _gauss(4000, 1, mean=1.5, std=2.0, seed=13)
    expected = 1.5**2 + (2.0 - 1.0) ** 2  # W2^2 = (m1 - m2)^2 + (s1 - s2)^2 in 1-D
    assert float(get_divergence("sliced_wasserstein")(x, y)) == pytest.approx(expected, rel=0.05)
    # a translation by v in d dims: every projection is shifted by theta.v, so SW_2^2 = E (theta.v)^2 = |v|^2 / d
    z = _gauss(50, 3, seed=14)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    sw = get_divergence("sliced_wasserstein", num_projections=4000, seed=0)
    assert float(sw(z, z + v)) == pytest.approx(float(v @ v) / 3, rel=0.05)
    assert float(sw(z, z + v)) == float(sw(z, z + v))  # a seed fixes the directions


# ----------------------------------------------------------------------------- Sinkhorn


def _pot_sinkhorn2(cost: np.ndarray, eps: float, iters: int) -> float:
    n, m = cost.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            ot.sinkhorn2(np.full(n, 1 / n), np.full(m, 1 / m), cost, eps, numItermax=iters, stopThr=0.0)
        )


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.005])
def test_batched_sinkhorn_matches_pot_per_problem(eps):
    g = torch.Generator().manual_seed(15)
    x, y = (
        torch.rand(6, 12, 2, generator=g, dtype=torch.float64),
        torch.rand(6, 9, 2, generator=g, dtype=torch.float64),
    )
    cost = torch.cdist(x, y) ** 2
    iters = 200
    values, plans = sinkhorn_cost(cost, epsilon=eps, iterations=iters)
    refs = np.array([_pot_sinkhorn2(cost[i].numpy(), eps, iters) for i in range(6)])
    np.testing.assert_allclose(values.numpy(), refs, rtol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan0 = ot.sinkhorn(
            np.full(12, 1 / 12), np.full(9, 1 / 9), cost[0].numpy(), eps, numItermax=iters, stopThr=0.0
        )
    np.testing.assert_allclose(plans[0].numpy(), plan0, rtol=1e-7, atol=1e-14)
    values32, _ = sinkhorn_cost(cost.float(), epsilon=eps, iterations=iters)
    np.testing.assert_allclose(values32.double().numpy(), refs, rtol=1e-5)


def test_batched_sinkhorn_matrix_product_path_matches_pot():
    """Problems with N * M >= 4096 use batched matrix products instead of multiply-and-sum."""
    g = torch.Generator().manual_seed(28)
    x, y = (
        torch.rand(2, 70, 2, generator=g, dtype=torch.float64),
        torch.rand(2, 64, 2, generator=g, dtype=torch.float64),
    )
    cost = torch.cdist(x, y) ** 2
    values, _ = sinkhorn_cost(cost, epsilon=0.01, iterations=150)
    refs = np.array([_pot_sinkhorn2(cost[i].numpy(), 0.01, 150) for i in range(2)])
    np.testing.assert_allclose(values.numpy(), refs, rtol=1e-9)


def test_sinkhorn_small_epsilon_approaches_exact_ot():
    x, y = _gauss(6, 2, seed=16), _gauss(6, 2, mean=1.0, seed=17)
    cost = (torch.cdist(x, y) ** 2).numpy()
    exact = ot.emd2(np.full(6, 1 / 6), np.full(6, 1 / 6), cost)
    got = float(get_divergence("sinkhorn", epsilon=1e-3, iterations=3000)(x, y))
    assert got == pytest.approx(exact, rel=1e-3)


def test_sinkhorn_sample_divergence_batched_and_debiased():
    g = torch.Generator().manual_seed(18)
    x, y = (
        torch.randn(3, 20, 2, generator=g, dtype=torch.float64),
        torch.randn(3, 25, 2, generator=g, dtype=torch.float64) + 0.5,
    )
    d = get_divergence("sinkhorn", epsilon=0.1, iterations=200)
    out = d(x, y)
    assert out.shape == (3,)
    for i in range(3):
        assert float(out[i]) == pytest.approx(
            _pot_sinkhorn2((torch.cdist(x[i], y[i]) ** 2).numpy(), 0.1, 200), rel=1e-9
        )
    deb = get_divergence("sinkhorn", epsilon=0.1, iterations=200, debiased=True)
    assert abs(float(deb(x[0], x[0]))) < 1e-10
    assert (deb(x, y) > 0).all()
    assert (deb(x, y) < out).all()  # debiasing removes the entropic blur of the plain cost


def test_sinkhorn_gradcheck_and_half_inputs():
    g = torch.Generator().manual_seed(19)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    d = get_divergence("sinkhorn", epsilon=0.5, iterations=10)
    assert torch.autograd.gradcheck(lambda a, b: d(a, b), (x, y), eps=1e-6, atol=1e-6)
    out = d(x.detach().half(), y.detach().half())
    assert out.dtype == torch.float32


# ----------------------------------------------------------------------------- Cauchy-Schwarz


def test_cauchy_schwarz_gaussian_closed_form_and_symmetry():
    """Gaussian kernel width sig on N(m1, s^2 I), N(m2, s^2 I): D_CS -> |m1 - m2|^2 / (sig^2 + 2 s^2)."""
    x = _gauss(2000, 2, seed=20)
    y = _gauss(2000, 2, mean=torch.tensor([1.0, 1.0], dtype=torch.float64), seed=21)
    d = get_divergence("cauchy_schwarz", sigma=1.0)
    assert float(d(x, y)) == pytest.approx(2.0 / 3.0, rel=0.05)
    assert float(d(x, y)) == pytest.approx(float(d(y, x)), rel=1e-12)
    assert abs(float(d(x, x))) < 1e-12


# ----------------------------------------------------------------------------- distance covariance


def _dcov2_reference(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    n = len(x)
    a = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    b = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    if not unbiased:
        A = a - a.mean(0) - a.mean(1)[:, None] + a.mean()
        B = b - b.mean(0) - b.mean(1)[:, None] + b.mean()
        return float((A * B).mean())
    A = a - a.sum(0) / (n - 2) - a.sum(1)[:, None] / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    B = b - b.sum(0) / (n - 2) - b.sum(1)[:, None] / (n - 2) + b.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(A, 0)
    np.fill_diagonal(B, 0)
    return float((A * B).sum() / (n * (n - 3)))


@pytest.mark.parametrize("unbiased", [False, True])
def test_distance_covariance_matches_hand_computation_and_ccdcov(unbiased):
    x, y = _gauss(30, 2, seed=22), _gauss(30, 1, seed=23)
    y = y + x[:, :1] ** 2  # dependent, not linearly
    d = get_divergence("distance_covariance", unbiased=unbiased)
    assert float(d(x, y)) == pytest.approx(_dcov2_reference(x.numpy(), y.numpy(), unbiased), rel=1e-10)
    z1, z2 = _gauss(30, 1, seed=24), _gauss(30, 2, seed=25)
    ccdcov = float(d(x, [y[:, 0], z1, z2]))  # blocks are concatenated
    ref = _dcov2_reference(x.numpy(), np.concatenate([y.numpy(), z1.numpy(), z2.numpy()], 1), unbiased)
    assert ccdcov == pytest.approx(ref, rel=1e-10)


def test_distance_correlation_bivariate_normal_closed_form():
    """Szekely, Rizzo & Bakirov (2007), Thm 7: dCor^2 of a bivariate normal with correlation rho."""
    rho = 0.6
    g = torch.Generator().manual_seed(26)
    z = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    x = z[:, :1]
    y = rho * z[:, :1] + math.sqrt(1 - rho**2) * z[:, 1:]
    num = rho * math.asin(rho) + math.sqrt(1 - rho**2) - rho * math.asin(rho / 2) - math.sqrt(4 - rho**2) + 1
    expected = num / (1 + math.pi / 3 - math.sqrt(3))
    got = float(get_divergence("distance_covariance", normalized=True)(x, y))
    assert got == pytest.approx(expected, abs=0.03)
    independent = float(get_divergence("distance_covariance", normalized=True, unbiased=True)(x, z[:, 1:]))
    assert abs(independent) < 0.01


@pytest.mark.parametrize(
    "name", ["mmd", "energy_distance", "sliced_wasserstein", "cauchy_schwarz", "distance_covariance"]
)
def test_sample_members_gradcheck_and_float32_upcast(name):
    g = torch.Generator().manual_seed(27)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    d = get_divergence(name, **({"seed": 0} if name == "sliced_wasserstein" else {}))
    assert torch.autograd.gradcheck(lambda a, b: d(a, b), (x, y), eps=1e-6, atol=1e-6)
    out = d(x.detach().to(torch.bfloat16), y.detach().to(torch.bfloat16))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    xx = x.detach().clone().requires_grad_(True)
    d(xx, xx.detach()).backward()  # zero distances on the diagonal: no NaN gradients
    assert torch.isfinite(xx.grad).all()
