"""Categorical members against float64 hand computations and scipy; properties; numerics."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax

from divlab.divergences import FDivergence, available, get_divergence

F_MEMBERS = [n for n in available() if isinstance(get_divergence(n), FDivergence)]


def _mix(p, q, w):
    return w * p + (1 - w) * q


# Independent references, written from each definition (float64 numpy, summed over classes).
REFERENCE = {
    "forward_kl": lambda p, q: rel_entr(p, q).sum(-1),
    "reverse_kl": lambda p, q: rel_entr(q, p).sum(-1),
    "jeffreys": lambda p, q: (rel_entr(p, q) + rel_entr(q, p)).sum(-1),
    "js": lambda p, q: jensenshannon(p, q, axis=-1) ** 2,
    "generalized_js": lambda p, q: (
        0.5 * rel_entr(p, _mix(p, q, 0.5)) + 0.5 * rel_entr(q, _mix(p, q, 0.5))
    ).sum(-1),
    "total_variation": lambda p, q: 0.5 * np.abs(p - q).sum(-1),
    "pearson_chi2": lambda p, q: ((p - q) ** 2 / q).sum(-1),
    "neyman_chi2": lambda p, q: ((p - q) ** 2 / p).sum(-1),
    "squared_hellinger": lambda p, q: ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1),
    "softened_reverse_kl": lambda p, q: 2 * rel_entr(_mix(p, q, 0.5), p).sum(-1),
    "alpha": lambda p, q: ((p**0.5 * q**0.5).sum(-1) - 1) / (0.5 * -0.5),
    "skew_kl": lambda p, q: rel_entr(p, _mix(p, q, 0.1)).sum(-1),
    "skew_reverse_kl": lambda p, q: rel_entr(q, _mix(p, q, 0.9)).sum(-1),
    "chi2_mixture": lambda p, q: ((p - _mix(p, q, 0.5)) ** 2 / _mix(p, q, 0.5)).sum(-1),
    "alpha_beta": lambda p, q: -(p**0.5 * q**0.5 - 0.5 * p - 0.5 * q).sum(-1) / 0.25,
}

PARAMETRISED = [  # (name, params, reference) beyond the defaults
    (
        "generalized_js",
        {"beta": 0.2, "normalized": True},
        lambda p, q: (0.2 * rel_entr(p, _mix(p, q, 0.2)) + 0.8 * rel_entr(q, _mix(p, q, 0.2))).sum(-1) / 0.16,
    ),
    (
        "generalized_js",
        {"beta": 0.7},
        lambda p, q: (0.7 * rel_entr(p, _mix(p, q, 0.7)) + 0.3 * rel_entr(q, _mix(p, q, 0.7))).sum(-1),
    ),
    ("alpha", {"alpha": 2.0}, lambda p, q: ((p**2 / q).sum(-1) - 1) / 2),
    ("alpha", {"alpha": -0.7}, lambda p, q: ((p**-0.7 * q**1.7).sum(-1) - 1) / (-0.7 * -1.7)),
    ("alpha", {"alpha": 1.0}, lambda p, q: rel_entr(p, q).sum(-1)),
    ("alpha", {"alpha": 0.0}, lambda p, q: rel_entr(q, p).sum(-1)),
    ("skew_kl", {"alpha": 0.4}, lambda p, q: rel_entr(p, _mix(p, q, 0.4)).sum(-1)),
    ("skew_reverse_kl", {"alpha": 0.3}, lambda p, q: rel_entr(q, _mix(p, q, 0.7)).sum(-1)),
    (
        "alpha_beta",
        {"alpha": 0.3, "beta": 1.2},
        lambda p, q: -(p**0.3 * q**1.2 - 0.2 * p**1.5 - 0.8 * q**1.5).sum(-1) / 0.36,
    ),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}, lambda p, q: rel_entr(p, q).sum(-1)),
    ("alpha_beta", {"alpha": 0.0, "beta": 1.0}, lambda p, q: rel_entr(q, p).sum(-1)),
    (
        "alpha_beta",
        {"alpha": 0.6, "beta": 0.0},
        lambda p, q: (p**0.6 * np.log(p**0.6 / q**0.6) - p**0.6 + q**0.6).sum(-1) / 0.36,
    ),
    (
        "alpha_beta",
        {"alpha": 0.0, "beta": 0.4},
        lambda p, q: (q**0.4 * np.log(q**0.4 / p**0.4) - q**0.4 + p**0.4).sum(-1) / 0.16,
    ),
    (
        "alpha_beta",
        {"alpha": 0.5, "beta": -0.5},
        lambda p, q: (np.log(q**0.5 / p**0.5) + p**0.5 / q**0.5 - 1).sum(-1) / 0.25,
    ),
    ("alpha_beta", {"alpha": 0.0, "beta": 0.0}, lambda p, q: 0.5 * ((np.log(p) - np.log(q)) ** 2).sum(-1)),
]

CASES = [(n, {}, REFERENCE[n]) for n in sorted(REFERENCE)] + PARAMETRISED


def _ids(case):
    name, params, _ = case
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def _logits(kind: str, seed: int, shape=(5, 7)):
    g = torch.Generator().manual_seed(seed)
    t, s = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    )
    if kind == "peaked":  # one dominant class with probability ~0.999, others tiny
        t, s = 1.5 * t, 1.5 * s
        t[..., 0] += 9.0
        s[..., 1] += 8.0
    return t, s


def test_every_categorical_member_has_a_reference():
    categorical = {n for n in available() if get_divergence(n).kind == "categorical"}
    kd = {"hinton_kd", "dkd", "pld", "ofa"}  # tested in test_divergences_kd.py
    assert categorical - kd == set(REFERENCE)


@pytest.mark.parametrize("kind", ["random", "peaked"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_matches_float64_reference(case, kind):
    name, params, ref = case
    t, s = _logits(kind, seed=hash((name, kind)) % 1000)
    p, q = softmax(t.numpy(), -1), softmax(s.numpy(), -1)
    expected = ref(p, q)
    d = get_divergence(name, **params)
    got64 = d(t, s)
    assert got64.dtype == torch.float64 and got64.shape == (5,)
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-9, atol=1e-12)
    got32 = d(t.float(), s.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), expected, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("name", F_MEMBERS)
def test_pointwise_agrees_with_generator(name):
    """The stable log-space summand is sum_x Q f(P/Q) with the member's own f."""
    d = get_divergence(name)
    t, s = _logits("random", seed=3)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    direct = (q * d.f(p / q)).sum(-1)
    torch.testing.assert_close(d(t, s), direct, rtol=1e-9, atol=1e-12)


def test_js_is_scipy_jensenshannon_squared_and_generalized_js_endpoints():
    t, s = _logits("random", seed=5)
    p, q = softmax(t.numpy(), -1), softmax(s.numpy(), -1)
    js = get_divergence("js")(t, s).numpy()
    np.testing.assert_allclose(js, jensenshannon(p, q, axis=-1) ** 2, rtol=1e-10)
    np.testing.assert_allclose(get_divergence("generalized_js", beta=0.5)(t, s).numpy(), js, rtol=1e-10)
    gjs = functools.partial(get_divergence, "generalized_js", normalized=True)
    np.testing.assert_allclose(gjs(beta=0.5)(t, s).numpy(), 4 * js, rtol=1e-10)
    fwd, rev = get_divergence("forward_kl")(t, s), get_divergence("reverse_kl")(t, s)
    torch.testing.assert_close(gjs(beta=0.0)(t, s), fwd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gjs(beta=1.0)(t, s), rev, rtol=1e-10, atol=1e-12)
    # continuity at the endpoints (normalized form); error is O(beta)
    torch.testing.assert_close(gjs(beta=1e-6)(t, s), fwd, rtol=1e-4, atol=0)
    torch.testing.assert_close(gjs(beta=1 - 1e-6)(t, s), rev, rtol=1e-4, atol=0)


def test_named_identities_between_members():
    t, s = _logits("random", seed=11)
    g = get_divergence
    torch.testing.assert_close(g("alpha", alpha=0.5)(t, s), 2 * g("squared_hellinger")(t, s))
    torch.testing.assert_close(g("alpha", alpha=2.0)(t, s), g("pearson_chi2")(t, s) / 2)
    torch.testing.assert_close(g("alpha", alpha=-1.0)(t, s), g("neyman_chi2")(t, s) / 2)
    torch.testing.assert_close(g("jeffreys")(t, s), g("forward_kl")(t, s) + g("reverse_kl")(t, s))
    torch.testing.assert_close(g("neyman_chi2")(t, s), g("pearson_chi2")(s, t))
    torch.testing.assert_close(g("skew_kl", alpha=0.0)(t, s), g("forward_kl")(t, s))
    torch.testing.assert_close(g("skew_reverse_kl", alpha=0.0)(t, s), g("reverse_kl")(t, s))
    torch.testing.assert_close(g("alpha_beta", alpha=0.3, beta=0.7)(t, s), g("alpha", alpha=0.3)(t, s))


# ----------------------------------------------------------------------------- hypothesis properties

logit_rows = st.integers(2, 7).flatmap(
    lambda k: st.tuples(
        st.lists(st.floats(-8, 8, allow_nan=False), min_size=k, max_size=k),
        st.lists(st.floats(-8, 8, allow_nan=False), min_size=k, max_size=k),
    )
)
PROPS = settings(max_examples=25, deadline=None, derandomize=True)
CATEGORICAL_NO_LABELS = sorted(REFERENCE)


@PROPS
@given(rows=logit_rows)
def test_nonnegative_and_zero_at_equality(rows):
    t = torch.tensor(rows[0], dtype=torch.float64)
    s = torch.tensor(rows[1], dtype=torch.float64)
    for name in CATEGORICAL_NO_LABELS:
        d = get_divergence(name)
        assert float(d(t, s)) >= -1e-10, name
        assert abs(float(d(t, t + 3.0))) < 1e-10, name  # shifted logits: the same distribution


@PROPS
@given(rows=logit_rows)
def test_symmetric_members_are_symmetric(rows):
    t = torch.tensor(rows[0], dtype=torch.float64)
    s = torch.tensor(rows[1], dtype=torch.float64)
    symmetric = [n for n in CATEGORICAL_NO_LABELS if getattr(get_divergence(n), "symmetric", False)]
    assert set(symmetric) == {"jeffreys", "js", "total_variation", "squared_hellinger", "chi2_mixture"}
    for name in symmetric:
        d = get_divergence(name)
        torch.testing.assert_close(d(t, s), d(s, t), rtol=1e-9, atol=1e-12)
    assert not get_divergence("forward_kl").symmetric


@PROPS
@given(rows=logit_rows, factor=st.sampled_from([1e-3, 1e-4]))
def test_parameter_limits_equal_the_kls(rows, factor):
    t = torch.tensor(rows[0], dtype=torch.float64)
    s = torch.tensor(rows[1], dtype=torch.float64)
    # the limits are pointwise in r = P/Q: the parameter must be small against 1/max(r, 1/r)
    log_r = torch.log_softmax(t, -1) - torch.log_softmax(s, -1)
    eps = factor / float(torch.exp(log_r.abs().max()))
    fwd, rev = float(get_divergence("forward_kl")(t, s)), float(get_divergence("reverse_kl")(t, s))
    tol = 1e-2 * max(fwd, rev) + 1e-9
    g = get_divergence
    assert abs(float(g("alpha", alpha=1 - eps)(t, s)) - fwd) < tol
    assert abs(float(g("alpha", alpha=eps)(t, s)) - rev) < tol
    assert abs(float(g("generalized_js", beta=eps, normalized=True)(t, s)) - fwd) < tol
    assert abs(float(g("generalized_js", beta=1 - eps, normalized=True)(t, s)) - rev) < tol
    assert abs(float(g("alpha_beta", alpha=1.0, beta=eps)(t, s)) - fwd) < tol
    assert abs(float(g("alpha_beta", alpha=eps, beta=1.0)(t, s)) - rev) < tol
    assert abs(float(g("skew_kl", alpha=eps)(t, s)) - fwd) < tol
    assert abs(float(g("skew_reverse_kl", alpha=eps)(t, s)) - rev) < tol


def _alpha_beta_continuity():
    t, s = _logits("random", seed=21, shape=(6,))
    for a, b in [(0.7, 0.0), (0.0, 0.6), (0.8, -0.8), (0.0, 0.0)]:
        exact = get_divergence("alpha_beta", alpha=a, beta=b)(t, s)
        near = get_divergence("alpha_beta", alpha=a + 1e-5, beta=b + 2e-5)(t, s)
        yield (a, b), exact, near


def test_alpha_beta_singular_points_are_continuous():
    for point, exact, near in _alpha_beta_continuity():
        torch.testing.assert_close(near, exact, rtol=1e-3, atol=1e-8, msg=str(point))


GENERATOR_CASES = [(n, {}) for n in F_MEMBERS] + [
    ("alpha", {"alpha": 1.0}),
    ("alpha", {"alpha": 0.0}),
    ("alpha", {"alpha": 2.5}),
    ("generalized_js", {"beta": 0.0, "normalized": True}),
    ("generalized_js", {"beta": 1.0, "normalized": True}),
    ("generalized_js", {"beta": 0.3}),
    ("generalized_js", {"beta": 0.3, "normalized": True}),
    ("skew_kl", {"alpha": 0.5}),
    ("skew_reverse_kl", {"alpha": 0.5}),
    ("alpha_beta", {"alpha": 0.25, "beta": 0.75}),
]


@pytest.mark.parametrize(
    "case", GENERATOR_CASES, ids=lambda c: c[0] + "".join(f"-{v}" for v in c[1].values())
)
def test_f_prime_and_weight_match_autograd(case):
    """f(1) = 0, f'(u) = d f/du and weight(r) = r^2 f''(r), both by autograd, on a grid of ratios."""
    name, params = case
    d = get_divergence(name, **params)
    assert float(d.f(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    r = torch.cat(
        [torch.logspace(-2, 1.3, 40, dtype=torch.float64), torch.tensor([0.9, 1.1, 1.5], dtype=torch.float64)]
    )
    r = r[(r - 1).abs() > 1e-3].requires_grad_(True)  # total_variation's kink sits at u = 1
    (df,) = torch.autograd.grad(d.f(r).sum(), r, create_graph=True)
    (d2f,) = torch.autograd.grad(df.sum(), r)
    torch.testing.assert_close(d.f_prime(r.detach()), df.detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(d.weight(r.detach()), r.detach() ** 2 * d2f, rtol=1e-8, atol=1e-10)


@PROPS
@given(r=st.floats(0.01, 50.0))
def test_weight_property_by_hypothesis(r):
    x = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    for name in F_MEMBERS:
        d = get_divergence(name)
        (df,) = torch.autograd.grad(d.f(x), x, create_graph=True)
        (d2f,) = torch.autograd.grad(df, x)
        assert float(d.weight(x.detach())) == pytest.approx(r**2 * float(d2f), rel=1e-7, abs=1e-10), name


def test_alpha_beta_generator_only_on_amari_line():
    with pytest.raises(NotImplementedError, match="alpha \\+ beta == 1"):
        get_divergence("alpha_beta", alpha=0.5, beta=0.7).weight(torch.ones(2))


# ----------------------------------------------------------------------------- gradients and numerics


@pytest.mark.parametrize("name", CATEGORICAL_NO_LABELS)
def test_gradcheck_float64(name):
    d = get_divergence(name, **({"alpha": 0.3} if name == "alpha" else {}))
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: d(a, b), (t, s), eps=1e-6, atol=1e-7)


# members whose value stays finite when the two distributions have disjoint supports
DISJOINT_FINITE = [
    "forward_kl",
    "reverse_kl",
    "jeffreys",
    "js",
    "generalized_js",
    "total_variation",
    "squared_hellinger",
    "softened_reverse_kl",
    "alpha",
    "skew_kl",
    "skew_reverse_kl",
    "chi2_mixture",
    "alpha_beta",
]


def _finite_value_and_grads(d, t, s):
    t = t.clone().requires_grad_(True)
    s = s.clone().requires_grad_(True)
    v = d(t, s)
    v.sum().backward()
    return (
        bool(torch.isfinite(v).all()),
        bool(torch.isfinite(t.grad).all() and torch.isfinite(s.grad).all()),
        v,
    )


@pytest.mark.parametrize("name", CATEGORICAL_NO_LABELS)
def test_extreme_logits_and_masked_classes(name):
    g = torch.Generator().manual_seed(1)
    big = 1e4 * torch.sign(torch.randn(4, 9, generator=g))
    # same support at +-1e4 scale (probabilities underflow to exactly 0 in most classes)
    t, s = big + torch.randn(4, 9, generator=g), big + torch.randn(4, 9, generator=g)
    ok_v, ok_g, _ = _finite_value_and_grads(get_divergence(name), t, s)
    assert ok_v and ok_g
    # -inf classes (vocabulary padding) in both: finite, and equal to dropping those classes
    t2, s2 = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    t2[:, -3:] = float("-inf")
    s2[:, -3:] = float("-inf")
    ok_v, ok_g, v = _finite_value_and_grads(get_divergence(name), t2, s2)
    assert ok_v and ok_g
    torch.testing.assert_close(v.detach(), get_divergence(name)(t2[:, :-3], s2[:, :-3]))
    if name in DISJOINT_FINITE:  # independent +-1e4 logits: near-disjoint supports
        t3 = 1e4 * torch.randn(4, 9, generator=g)
        s3 = 1e4 * torch.randn(4, 9, generator=g)
        ok_v, ok_g, _ = _finite_value_and_grads(get_divergence(name), t3, s3)
        assert ok_v and ok_g


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js", "alpha", "chi2_mixture", "alpha_beta"])
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    g = torch.Generator().manual_seed(2)
    t, s = (4 * torch.randn(3, 50, generator=g)).to(dtype), (4 * torch.randn(3, 50, generator=g)).to(dtype)
    d = get_divergence(name)
    out = d(t, s)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, d(t.float(), s.float()), rtol=0, atol=0)
    p, q = softmax(t.double().numpy(), -1), softmax(s.double().numpy(), -1)
    np.testing.assert_allclose(out.double().numpy(), REFERENCE[name](p, q), rtol=1e-4)


# ----------------------------------------------------------------------------- masks, reductions, dim


def test_mask_zeroes_positions_without_nan_gradients():
    d = get_divergence("forward_kl")
    t = torch.randn(3, 4, 6)
    s = torch.randn(3, 4, 6)
    t[0, 1] = float("nan")  # garbage at a masked position
    s[2, 3] = float("-inf")  # a whole row of -inf: log_softmax would give NaN
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False
    mask[2, 3] = False
    s.requires_grad_(True)
    v = d(t, s, mask=mask)
    assert v.shape == (3, 4)
    assert v[0, 1] == 0 and v[2, 3] == 0 and torch.isfinite(v).all()
    v.sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[2, 3] == 0).all()
    mean = d(t, s, mask=mask, reduction="mean")
    torch.testing.assert_close(mean, v.sum() / 10)
    torch.testing.assert_close(get_divergence("forward_kl", reduction="sum")(t, s, mask=mask), v.sum())


def test_dim_argument_and_integer_mask():
    d = get_divergence("js")
    t, s = torch.randn(2, 5, 3), torch.randn(2, 5, 3)  # classes on dim 1
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    v = d(t, s, mask=mask, dim=1)
    expected = d(t.transpose(1, 2), s.transpose(1, 2), mask=mask.bool())
    torch.testing.assert_close(v, expected)
    assert v[0, 1] == 0 and v[1, 2] == 0


def test_shape_mismatch_is_one_clear_sentence():
    with pytest.raises(ValueError, match="same shape"):
        get_divergence("forward_kl")(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="mask must have"):
        get_divergence("forward_kl")(torch.randn(2, 5), torch.randn(2, 5), mask=torch.ones(5))
