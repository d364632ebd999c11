"""SuperDiff (divlab.objectives.superdiff): the Ito density estimator against exact log-densities, the AND and
OR weights, on Gaussian mixtures whose density is written here and whose score comes from autograd
(independent of divlab.models.gmm_teacher's closed form)."""

import math

import pytest
import torch

from divlab.errors import ConfigError
from divlab.objectives.superdiff import and_kappa, ito_increment, or_kappa, superdiff_sample

SIGMA_MAX, SIGMA_MIN = 80.0, 0.002


class Mixture:
    """sum_k w_k N(mu_k, std^2 I) in 2-D, noised to sigma: log-density by hand, denoiser by autograd."""

    def __init__(self, means, std, weights=None):
        self.means = torch.tensor(means, dtype=torch.float64)
        self.std = std
        w = (
            torch.ones(len(means), dtype=torch.float64)
            if weights is None
            else torch.tensor(weights, dtype=torch.float64)
        )
        self.log_w = (w / w.sum()).log()

    def log_density(self, x, sigma):
        var = self.std**2 + torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2  # (B or 1, 1)
        sq = ((x.double()[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        return torch.logsumexp(self.log_w - sq / (2 * var) - torch.log(2 * math.pi * var), dim=1)

    def __call__(self, x, sigma):  # D(x; sigma) = x + sigma^2 grad log p(x; sigma)
        with torch.enable_grad():
            xg = x.detach().double().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_density(xg, sigma).sum(), xg)
        return x + torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2 * grad


@pytest.fixture(autouse=True)
def one_thread():
    # Small tensors: one thread is fastest, and immune to the other processes on a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(models, *, rule, steps, seed, n=256, exact_start=False, **kw):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    init = torch.stack([m.log_density(SIGMA_MAX * z, SIGMA_MAX) for m in models]) if exact_start else None
    r = superdiff_sample(
        models,
        z,
        rule=rule,
        num_steps=steps,
        sigma_max=SIGMA_MAX,
        sigma_min=SIGMA_MIN,
        generator=g,
        log_q_init=init,
        **kw,
    )
    exact = torch.stack([m.log_density(r.x, SIGMA_MIN) for m in models])
    return r, exact


def test_ito_estimator_tracks_the_exact_log_density():
    """Paths of model 1's reverse SDE; both models' log-densities tracked by (S4) from exact start values
    and compared with the exact log q_i(x; sigma_min) at the end.

    Tolerance, and why: Euler-Maruyama replaces 1/2 dx^T Hess(log q) dx by its mean (h/2) tr Hess, so
    each step adds a zero-mean error of size ~ h |Hess log q| and a bias O(h^2): per path the error
    is O(N^-1/2), its mean O(N^-1). With N = 400 Karras steps we measured (256 paths) a mean error
    of 0.27 nats and a mean |error| of 0.60 for model 1 (whose log q varies by 1.0 nats (std) over
    the samples), 1.8 nats for model 2 along the same paths (4% of its |log q| there, -42 +- 45 nats).
    The bounds below leave ~1.5x room (a 10% error in the |s|^2 coefficient of (S3) already fails
    them), and the error must shrink with N (at N = 100 it is ~2.5x larger)."""
    m1 = Mixture([(-2.0, 0.0), (0.0, 0.0)], 0.15)
    m2 = Mixture([(0.0, 0.0), (2.0, 0.0)], 0.15)
    errors = {}
    for steps in (100, 400):
        r, exact = run([m1, m2], rule="fixed", kappa=[1.0, 0.0], steps=steps, seed=0, exact_start=True)
        errors[steps] = (r.log_q - exact).abs().mean(1)
        if steps == 400:
            err = r.log_q - exact
            assert err[0].mean().abs() < 0.5
            assert err[0].abs().mean() < 0.9
            assert err[1].abs().mean() < 0.06 * exact[1].abs().mean()  # relative, far from model 2
            assert exact[1].mean() < exact[0].mean() - 30  # (model 2 is far: a real test)
    assert (errors[400] < 0.6 * errors[100]).all(), errors


def test_and_kappa_equalises_the_ito_increments():
    """(S6) by hand: with kappa from and_kappa, the step dx of (S4) gives both models the same increment."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 50, 2, generator=g, dtype=torch.float64) * 3
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    h = torch.tensor(0.37, dtype=torch.float64)
    kappa = and_kappa(s, z, h)
    dx = h * (kappa[:, :, None] * s).sum(0) + h.sqrt() * z
    inc = ito_increment(dx, s, h)
    torch.testing.assert_close(inc[0], inc[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(kappa.sum(0), torch.ones(50, dtype=torch.float64))
    same = and_kappa(torch.stack([s[0], s[0]]), z, h)  # models agree: kappa = 1/2
    torch.testing.assert_close(same, torch.full_like(same, 0.5))
    with pytest.raises(ConfigError, match="two models"):
        and_kappa(torch.randn(3, 4, 2), z[:4], h)


def test_and_keeps_log_densities_equal_where_the_average_does_not():
    """Two disjoint, unequally weighted 2-D mixtures (like the paper's toy): AND keeps the *exact*
    |log q1 - log q2| at the end small (measured 0.18 mean at N = 100), the kappa = 1/2 average does
    not (measured 6.2); the tracked difference stays 0 by construction."""
    up = Mixture([(-1.5, 1.5), (1.5, 1.5)], 0.4, [0.8, 0.2])
    down = Mixture([(-1.0, -1.5), (2.0, -1.5)], 0.4, [0.3, 0.7])
    r_and, ex_and = run([up, down], rule="and", steps=100, seed=1)
    r_avg, ex_avg = run([up, down], rule="fixed", kappa=[0.5, 0.5], steps=100, seed=1)
    gap_and = (ex_and[0] - ex_and[1]).abs().mean()
    gap_avg = (ex_avg[0] - ex_avg[1]).abs().mean()
    assert gap_and < 0.5
    assert gap_avg > 2.0 and gap_avg > 10 * gap_and
    assert (r_and.log_q[0] - r_and.log_q[1]).abs().max() < 1e-8
    assert r_and.kappa_outside > 0  # AND's kappa is not a convex weight (see (S6))


def test_or_kappa_is_the_tempered_posterior():
    log_q = torch.tensor([[-1.0, 3.0, 0.0], [-2.0, 1.0, 0.5]], dtype=torch.float64)
    w = torch.tensor([0.25, 0.75], dtype=torch.float64)
    k1 = or_kappa(log_q, temperature=1.0, log_weights=w.log())
    by_hand = w[:, None] * log_q.exp() / (w[:, None] * log_q.exp()).sum(0)
    torch.testing.assert_close(k1, by_hand)
    k_hot = or_kappa(log_q, temperature=1e3, log_weights=w.log())
    torch.testing.assert_close(k_hot, torch.nn.functional.one_hot(log_q.argmax(0), 2).T.double())


def test_or_with_large_temperature_picks_the_higher_density_model():
    """Two overlapping Gaussians: at T = 1 the final kappa is the exact posterior q_i / (q_1 + q_2)
    (within the Ito error; measured 0.009 mean abs), at T = 100 it is one-hot on the model whose
    exact density at the sample is higher (measured 99.6% of samples)."""
    a, b = Mixture([(0.0, 0.0)], 0.5), Mixture([(0.6, 0.0)], 0.5)
    r1, ex1 = run([a, b], rule="or", temperature=1.0, steps=200, seed=2, exact_start=True)
    assert (r1.kappa_last - torch.softmax(ex1, 0)).abs().mean() < 0.05
    assert (r1.kappa_last.max(0).values < 0.99).double().mean() > 0.5  # soft at T = 1
    r100, ex100 = run([a, b], rule="or", temperature=100.0, steps=200, seed=2, exact_start=True)
    assert (r100.kappa_last.max(0).values > 0.99).double().mean() > 0.95
    assert (r100.kappa_last.argmax(0) == ex100.argmax(0)).double().mean() > 0.95


def test_bad_settings_fail_in_one_sentence():
    m = Mixture([(0.0, 0.0)], 0.5)
    z = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="rule"):
        superdiff_sample([m, m], z, rule="xor")
    with pytest.raises(ConfigError, match="two models"):
        superdiff_sample([m, m, m], z, rule="and")
    with pytest.raises(ConfigError, match="kappa"):
        superdiff_sample([m, m], z, rule="fixed")
    with pytest.raises(ConfigError, match="temperature"):
        superdiff_sample([m, m], z, rule="or", temperature=0.0)
    with pytest.raises(ConfigError, match="sigma_min"):
        superdiff_sample([m, m], z, rule="or", sigma_min=1.0, sigma_max=0.5)
