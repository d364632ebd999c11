"""Distillation losses: hand-worked examples and the identities their papers state."""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as np_log_softmax
from scipy.special import rel_entr, softmax

from divlab.divergences import get_divergence
from divlab.divergences.pld import plackett_luce_loss, teacher_optimal_permutation


def _data(seed=0, n=6, c=10, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = 2 * torch.randn(n, c, generator=g, dtype=dtype)
    s = 2 * torch.randn(n, c, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return t, s, y


def test_hinton_kd_is_t2_times_kl_at_temperature():
    t, s, y = _data()
    T = 3.0
    ref = rel_entr(softmax(t.numpy() / T, -1), softmax(s.numpy() / T, -1)).sum(-1)
    np.testing.assert_allclose(
        get_divergence("hinton_kd", temperature=T)(t, s, labels=y).numpy(), T**2 * ref, rtol=1e-10
    )
    np.testing.assert_allclose(
        get_divergence("hinton_kd", temperature=T, t2_scale=False)(t, s).numpy(), ref, rtol=1e-10
    )


def test_dkd_decomposition_kd_equals_tckd_plus_weighted_nckd():
    """Zhao et al. Sec. 3.1: KL(p^T||p^S) = TCKD + (1 - p_t^T) NCKD, on random logits."""
    for seed in range(3):
        t, s, y = _data(seed, n=8, c=12)
        dkd = get_divergence("dkd", temperature=2.0)
        tckd, nckd, pt, _ = dkd.parts(t, s, y)
        kd = get_divergence("forward_kl")(t / 2.0, s / 2.0)
        torch.testing.assert_close(kd, tckd + (1 - pt) * nckd, rtol=1e-10, atol=1e-12)


def test_dkd_matches_hand_computation():
    t, s, y = _data(4, n=5, c=7)
    T, a, b = 4.0, 1.0, 8.0
    p, q = softmax(t.numpy() / T, -1), softmax(s.numpy() / T, -1)
    rows = np.arange(5)
    pt, qt = p[rows, y.numpy()], q[rows, y.numpy()]
    tckd = rel_entr(pt, qt) + rel_entr(1 - pt, 1 - qt)
    p_hat, q_hat = p.copy(), q.copy()
    p_hat[rows, y.numpy()] = 0
    q_hat[rows, y.numpy()] = 0
    p_hat /= p_hat.sum(-1, keepdims=True)
    q_hat /= q_hat.sum(-1, keepdims=True)
    nckd = rel_entr(p_hat, q_hat).sum(-1)
    expected = T**2 * (a * tckd + b * nckd)
    np.testing.assert_allclose(get_divergence("dkd")(t, s, labels=y).numpy(), expected, rtol=1e-9)


def _list_mle(scores: np.ndarray, perm: np.ndarray) -> float:
    """Plain ListMLE negative log-likelihood, one loop per rank."""
    s = scores[perm]
    return float(sum(np.log(np.exp(s[k:]).sum()) - s[k] for k in range(len(s))))


def test_pld_uniform_weights_is_listmle_and_one_hot_weights_is_ce():
    t, s, y = _data(5, n=4, c=9)
    perm = teacher_optimal_permutation(t, y)
    assert (perm[:, 0] == y).all()
    # the rest in descending teacher logit
    rest = t.gather(-1, perm[:, 1:])
    assert (rest[:, :-1] >= rest[:, 1:]).all()
    uniform = plackett_luce_loss(s, perm, torch.ones_like(s))
    for i in range(4):
        assert float(uniform[i]) == pytest.approx(_list_mle(s[i].numpy(), perm[i].numpy()), rel=1e-10)
    one_hot = torch.zeros_like(s)
    one_hot[:, 0] = 1.0
    torch.testing.assert_close(plackett_luce_loss(s, perm, one_hot), F.cross_entropy(s, y, reduction="none"))


def test_pld_matches_hand_computation_and_tau_limit():
    t, s, y = _data(6, n=3, c=6)
    tau = 2.0
    got = get_divergence("pld", tau=tau)(t, s, labels=y)
    for i in range(3):
        perm = [int(y[i])] + [c for c in np.argsort(-t[i].numpy(), kind="stable") if c != int(y[i])]
        w = softmax(t[i].numpy() / tau)[perm]
        z = s[i].numpy()[perm]
        expected = sum(w[k] * (np.log(np.exp(z[k:]).sum()) - z[k]) for k in range(6))
        assert float(got[i]) == pytest.approx(expected, rel=1e-10)
    # tau -> 0 with the label = teacher's argmax: weights become one-hot on rank 1, i.e. CE
    y_top = t.argmax(-1)
    torch.testing.assert_close(
        get_divergence("pld", tau=1e-3)(t, s, labels=y_top),
        F.cross_entropy(s, y_top, reduction="none"),
        rtol=1e-6,
        atol=1e-8,
    )


def test_ofa_hand_computation_and_eps_one_is_soft_cross_entropy():
    t, s, y = _data(7, n=5, c=8)
    p, logq = softmax(t.numpy(), -1), np_log_softmax(s.numpy(), -1)
    soft_ce = -(p * logq).sum(-1)
    np.testing.assert_allclose(
        get_divergence("ofa", epsilon=1.0)(t, s, labels=y).numpy(), soft_ce, rtol=1e-10
    )
    eps = 1.5
    onehot = np.eye(8)[y.numpy()]
    w = (p + onehot) ** eps - onehot
    np.testing.assert_allclose(
        get_divergence("ofa", epsilon=eps)(t, s, labels=y).numpy(), -(w * logq).sum(-1), rtol=1e-10
    )


def test_sinkd_pot_plan_equals_pot_on_l1_costs_between_rows():
    t, s, _ = _data(8, n=7, c=5)
    T, eps, iters, lam = 2.0, 0.05, 30, 0.5
    p, q = softmax(t.numpy() / T, -1), softmax(s.numpy() / T, -1)
    cost = ot.dist(q, p, metric="cityblock")
    w = np.full(7, 1 / 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ot.sinkhorn2(w, w, cost, eps, numItermax=iters, stopThr=0.0)
    got = get_divergence("sinkd", temperature=T, epsilon=eps, iterations=iters, lam=lam, plan="pot")(t, s)
    assert got.shape == ()
    assert float(got) == pytest.approx(lam * float(ref), rel=1e-9)


def test_sinkd_mask_drops_rows_and_gradients_are_finite():
    t, s, _ = _data(9, n=6, c=5)
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    d = get_divergence("sinkd")
    torch.testing.assert_close(d(t, s, mask=mask), d(t[mask], s[mask]))
    s = s.clone().requires_grad_(True)
    d(t, s).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["hinton_kd", "dkd", "pld", "ofa", "sinkd"])
def test_kd_gradcheck_float64(name):
    t, s, y = _data(10, n=3, c=5)
    t.requires_grad_(name != "pld")  # PLD sorts by the teacher: piecewise in the teacher's logits
    s.requires_grad_(True)
    d = get_divergence(name)
    inputs = (t, s) if name != "pld" else (s,)
    fn = (lambda a, b: d(a, b, labels=y)) if name != "pld" else (lambda b: d(t, b, labels=y))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["hinton_kd", "dkd", "pld", "ofa"])
def test_kd_extreme_logits_masked_classes_and_ignore_index(name):
    g = torch.Generator().manual_seed(11)
    t = 1e4 * torch.randn(4, 8, generator=g)
    s = 1e4 * torch.randn(4, 8, generator=g)
    t[:, -2:] = float("-inf")
    s[:, -2:] = float("-inf")
    y = torch.tensor([0, 3, -100, 5])  # -100: ignored position
    t.requires_grad_(True)
    s.requires_grad_(True)
    # hinton_kd reads no labels: it takes the position mask instead
    kw = {"mask": y >= 0} if name == "hinton_kd" else {"labels": y}
    v = get_divergence(name)(t, s, **kw)
    assert torch.isfinite(v).all() and v[2] == 0 and v.abs().sum() > 0
    v.sum().backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert (s.grad[2] == 0).all()


@pytest.mark.parametrize("name", ["dkd", "pld", "ofa"])
def test_labels_are_required_and_checked(name):
    t, s, _ = _data()
    with pytest.raises(ValueError, match="labels"):
        get_divergence(name)(t, s)
    with pytest.raises(ValueError, match="labels must be <"):
        get_divergence(name)(t, s, labels=torch.full((6,), 10))


@pytest.mark.parametrize("name", ["hinton_kd", "dkd", "pld", "ofa"])
def test_kd_half_precision_computed_in_float32(name):
    t, s, y = _data(12, dtype=torch.float32)
    d = get_divergence(name)
    out = d(t.bfloat16(), s.bfloat16(), labels=y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, d(t.bfloat16().float(), s.bfloat16().float(), labels=y), rtol=0, atol=0)
