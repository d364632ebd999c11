"""Every KD loss equals its reference formula at the paper's settings, and the distill task hands each
divergence the logits its reference expects (raw where it owns its temperature, /T with T^2 otherwise).

The references are re-derived here in float64 numpy from the papers and the official code's formulas
(mdistiller's kd_loss and dkd_loss, OFAKD's ofa_loss, 2018cx/SinKD's Sinkhorn, TRL's generalized_jsd_loss,
the PLD paper's loss), not copied.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp, softmax

from divlab.divergences import available, get_divergence
from divlab.errors import ConfigError
from divlab.models import MLP
from divlab.tasks import DistillTask
from divlab.tasks.distill import KDTerm, build_terms

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def _data(seed=0, n=16, c=10):
    g = torch.Generator().manual_seed(seed)
    t = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    s = 3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return t, s, y


def _kl_rows(lp, lq):
    return (np.exp(lp) * (lp - lq)).sum(-1)


# ----------------------------------------------------------------------------- reference formulas


def mdistiller_kd(t, s, T):
    """mdistiller kd_loss: T^2 * sum softmax(t/T) (log softmax(t/T) - log_softmax(s/T)), batch mean."""
    return T**2 * _kl_rows(log_softmax(t / T, -1), log_softmax(s / T, -1)).mean()


def mdistiller_dkd(t, s, y, alpha, beta, T):
    """mdistiller dkd_loss: binary (target, rest) KL + the KL among non-targets (target logit - 1000), T^2 each."""
    gt = np.eye(t.shape[1])[y].astype(bool)
    pt, ps = softmax(t / T, -1), softmax(s / T, -1)
    bt = np.stack([pt[gt], pt[~gt].reshape(len(y), -1).sum(-1)], -1)
    bs = np.stack([ps[gt], ps[~gt].reshape(len(y), -1).sum(-1)], -1)
    tckd = (bt * (np.log(bt) - np.log(bs))).sum(-1).mean() * T**2
    nckd = _kl_rows(log_softmax(t / T - 1000.0 * gt, -1), log_softmax(s / T - 1000.0 * gt, -1)).mean() * T**2
    return alpha * tckd + beta * nckd


def ofakd_ofa(t, s, y, eps, T):
    """OFAKD ofa_loss: -sum ((p_t + onehot)^eps - onehot) log q_s, batch mean."""
    onehot = np.eye(t.shape[1])[y]
    w = (softmax(t / T, -1) + onehot) ** eps - onehot
    return -(w * log_softmax(s / T, -1)).sum(-1).mean()


def pld_paper(t, s, y, tau):
    """PLD (Bassam et al. 2025): pi = label, then the rest by descending teacher logit; rank k costs
    w_k (log sum_{j >= k} exp(s_pi_j) - s_pi_k) with w = softmax(t / tau) at pi_k; raw student logits."""
    losses = []
    for i in range(len(y)):
        rest = [c for c in np.argsort(-t[i], kind="stable") if c != y[i]]
        pi = [int(y[i]), *rest]
        w = softmax(t[i] / tau)
        losses.append(sum(w[pi[k]] * (logsumexp(s[i, pi[k:]]) - s[i, pi[k]]) for k in range(len(pi))))
    return float(np.mean(losses))


def sinkd_official(t, s, *, T=2.0, eps=0.1, n_iters=20, lam=1e-3):
    """2018cx/SinKD loss.py: L1 costs between the softmax(./T) rows, K = exp(-C/eps) scaled rows then
    columns to sum 1, n_iters times, lam * sum(K * C). Linear domain, as the authors compute it."""
    ps, pt = softmax(s / T, -1), softmax(t / T, -1)
    cost = np.abs(ps[:, None, :] - pt[None, :, :]).sum(-1)
    plan = np.exp(-cost / eps)
    for _ in range(n_iters):
        plan = plan / plan.sum(1, keepdims=True)
        plan = plan / plan.sum(0, keepdims=True)
    return lam * (plan * cost).sum(), plan


def trl_generalized_jsd(t, s, beta, T=1.0):
    """TRL generalized_jsd_loss per token: M = log((1 - beta) q + beta p) from the student and teacher
    log-probabilities; beta KL(p || M) + (1 - beta) KL(q || M); p = teacher, q = student."""
    lq, lp = log_softmax(s / T, -1), log_softmax(t / T, -1)
    lm = np.logaddexp(lq + np.log1p(-beta), lp + np.log(beta))
    return beta * _kl_rows(lp, lm) + (1 - beta) * _kl_rows(lq, lm)


# ----------------------------------------------------------------------------- the library at the paper's settings


def test_hinton_kd_defaults_are_mdistillers():
    t, s, _ = _data(1)
    d = get_divergence("hinton_kd")
    assert (d.temperature, d.t2_scale) == (4.0, True)  # mdistiller CFG.KD.TEMPERATURE = 4
    assert float(d(t, s).mean()) == pytest.approx(mdistiller_kd(t.numpy(), s.numpy(), 4.0), rel=1e-10)


def test_dkd_defaults_are_mdistillers():
    t, s, y = _data(2)
    d = get_divergence("dkd")
    assert (d.alpha, d.beta, d.temperature) == (1.0, 8.0, 4.0)  # CFG.DKD ALPHA, BETA, T (warm-up: the task's)
    ref = mdistiller_dkd(t.numpy(), s.numpy(), y.numpy(), 1.0, 8.0, 4.0)
    assert float(d(t, s, labels=y).mean()) == pytest.approx(ref, rel=1e-9)
    other = get_divergence("dkd", alpha=0.5, beta=2.0, temperature=2.0)(t, s, labels=y).mean()
    assert float(other) == pytest.approx(
        mdistiller_dkd(t.numpy(), s.numpy(), y.numpy(), 0.5, 2.0, 2.0), rel=1e-9
    )


@pytest.mark.parametrize("eps, T", [(1.0, 1.0), (1.5, 1.0), (1.2, 2.0)])
def test_ofa_equals_ofakd(eps, T):
    t, s, y = _data(3)
    d = get_divergence("ofa") if (eps, T) == (1.0, 1.0) else get_divergence("ofa", epsilon=eps, temperature=T)
    assert float(d(t, s, labels=y).mean()) == pytest.approx(
        ofakd_ofa(t.numpy(), s.numpy(), y.numpy(), eps, T), rel=1e-10
    )


@pytest.mark.parametrize("tau", [1.0, 0.5, 4.0])
def test_pld_equals_the_papers_loss_on_raw_student_logits(tau):
    t, s, y = _data(4)
    d = get_divergence("pld") if tau == 1.0 else get_divergence("pld", tau=tau)
    assert float(d(t, s, labels=y).mean()) == pytest.approx(
        pld_paper(t.numpy(), s.numpy(), y.numpy(), tau), rel=1e-10
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sinkd_defaults_equal_the_official_code(dtype):
    t, s, _ = _data(5, n=16)
    ref, plan = sinkd_official(t.numpy(), s.numpy())
    assert plan.sum() == pytest.approx(16.0, rel=1e-9)  # mass B: unit rows and columns
    got = get_divergence("sinkd")(t.to(dtype), s.to(dtype))  # T 2, eps 0.1, 20 iterations, lambda 1e-3
    assert float(got) == pytest.approx(ref, rel=1e-10 if dtype == torch.float64 else 1e-5)
    # divlab's former plan (POT's marginals 1/B, mass 1) is about B times smaller at the same lambda
    pot = get_divergence("sinkd", plan="pot")(t, s)
    assert float(got) / float(pot) == pytest.approx(16.0, rel=2e-2)


def test_sinkd_gradient_equals_the_official_formulas():
    t, s, _ = _data(6, n=8, c=5)
    s = s.clone().requires_grad_(True)
    get_divergence("sinkd", lam=1.0)(t, s).backward()

    def official(s_):  # the same formula in torch, linear domain, for its autograd gradient
        ps, pt = torch.softmax(s_ / 2, -1), torch.softmax(t / 2, -1)
        cost = torch.cdist(ps, pt, p=1)
        plan = torch.exp(-cost / 0.1)
        for _ in range(20):
            plan = plan / plan.sum(1, keepdim=True)
            plan = plan / plan.sum(0, keepdim=True)
        return (plan * cost).sum()

    s2 = s.detach().clone().requires_grad_(True)
    official(s2).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_js_default_is_trls_and_gkds(beta):
    t, s, _ = _data(7)
    got = get_divergence("generalized_js", beta=beta)(t, s).numpy()
    np.testing.assert_allclose(got, trl_generalized_jsd(t.numpy(), s.numpy(), beta), rtol=1e-10)
    normalized = get_divergence("generalized_js", beta=beta, normalized=True)(t, s).numpy()
    np.testing.assert_allclose(normalized * beta * (1 - beta), got, rtol=1e-10)


# ----------------------------------------------------------------------------- what the distill task passes


KD_NAMES = [n for n in available() if get_divergence(n).kind != "samples"]


def _task(divergence, **kwargs):
    torch.manual_seed(0)
    student = MLP(input_shape=[1, 2, 5], num_classes=10, hidden=[8])
    teacher = MLP(input_shape=[1, 2, 5], num_classes=10, hidden=[8])
    return DistillTask(model=student, teacher=teacher, divergence=divergence, optimizer=SGD, **kwargs)


@pytest.mark.parametrize("name", KD_NAMES)
def test_task_gives_raw_logits_to_losses_that_own_their_temperature_and_t2_d_at_t_to_the_others(name):
    d = get_divergence(name)
    t, s, y = _data(8)
    T = 4.0
    task = _task(d, temperature=T, kd_weight=1.0, t_squared=True)
    got, logged = task.distill_loss(t, s, y, {})
    if d.owns_temperature:
        expected = d(t, s, labels=y).mean()
    else:
        expected = T**2 * d(t / T, s / T, labels=y).mean()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert set(logged) == {"kd"}


def test_pld_in_the_task_is_the_papers_loss_not_t2_times_pld_at_t():
    """The issue's measurement: before, the task loss was 16 * PLD(t/4, s/4)."""
    t, s, y = _data(9)
    task = _task(get_divergence("pld"), temperature=4.0, ce_weight=0.0)
    got, _ = task.distill_loss(t, s, y, {})
    assert float(got) == pytest.approx(pld_paper(t.numpy(), s.numpy(), y.numpy(), 1.0), rel=1e-10)
    assert float(got) != pytest.approx(16 * pld_paper(t.numpy() / 4, s.numpy() / 4, y.numpy(), 1.0), rel=1e-3)


def test_a_divergence_that_does_not_declare_its_temperature_is_refused():
    with pytest.raises(ConfigError, match="owns_temperature"):
        KDTerm(divergence=lambda a, b: (a - b).pow(2).sum(-1))


def test_sinkd_recipe_is_the_papers_total_loss(monkeypatch):
    """(1 - a) CE + a KL(t/T || s/T) + b * SinKD, a = 0.9, T = 2, b = 0.8, by hand from the official formulas."""
    terms = [
        KDTerm(divergence=get_divergence("forward_kl"), weight=0.9, temperature=2.0, t_squared=False),
        KDTerm(divergence=get_divergence("sinkd"), weight=0.8, temperature=4.0),
    ]
    torch.manual_seed(0)
    student = MLP(input_shape=[1, 2, 5], num_classes=10, hidden=[8]).double()
    teacher = MLP(input_shape=[1, 2, 5], num_classes=10, hidden=[8]).double()
    task = DistillTask(model=student, teacher=teacher, terms=terms, ce_weight=0.1, optimizer=SGD)
    monkeypatch.setattr(task, "track", lambda *a: None)
    x, y = torch.randn(16, 1, 2, 5, dtype=torch.float64), torch.arange(16) % 10
    loss = task.training_step((x, y), 0).detach()
    with torch.no_grad():
        t, s = teacher(x).numpy(), student(x).numpy()
    ce = -log_softmax(s, -1)[np.arange(16), y.numpy()].mean()
    kl = _kl_rows(log_softmax(t / 2, -1), log_softmax(s / 2, -1)).mean()
    expected = 0.1 * ce + 0.9 * kl + 0.8 * sinkd_official(t, s)[0]
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    assert task.term_names == ["kd_forward_kl", "kd_sinkd"]


def test_digits_sinkd_config_builds_the_papers_terms(compose_cfg):
    cfg = compose_cfg("experiment=kd/digits_sinkd")
    assert cfg.distill.ce_weight == 0.1
    kl, sink = build_terms(cfg.distill, cfg)
    assert (kl.name, kl.weight, kl.temperature, kl.scale, kl.owns_temperature) == (
        "forward_kl",
        0.9,
        2.0,
        1.0,
        False,
    )
    assert (sink.name, sink.weight, sink.owns_temperature) == ("sinkd", 0.8, True)
    div = sink.divergence
    assert (div.temperature, div.epsilon, div.iterations, div.lam, div.plan) == (
        2.0,
        0.1,
        20,
        1e-3,
        "reference",
    )
    cfg = compose_cfg("experiment=kd/digits_sinkd", "divergence.lam=0.01")
    assert (
        build_terms(cfg.distill, cfg)[1].divergence.lam == 0.01
    )  # the Sinkhorn term is divergence=, so overrides reach it


def test_without_terms_the_single_divergence_is_the_one_term(compose_cfg):
    cfg = compose_cfg(
        "experiment=kd/digits", "divergence=js", "distill.kd_weight=0.5", "distill.temperature=3"
    )
    assert "terms" not in cfg.distill  # no new key: existing run hashes are unchanged
    (term,) = build_terms(cfg.distill, cfg)
    assert (term.name, term.weight, term.temperature, term.scale) == ("js", 0.5, 3.0, 9.0)


@pytest.mark.parametrize(
    "terms, key",
    [
        ("[{divergence: forward_kl, weigth: 1}]", r"distill.terms\[0\] has unknown key\(s\) weigth"),
        ("[{weight: 1}]", r"distill.terms\[0\] must be a mapping with a divergence"),
        ("[{divergence: kl}]", r"bad distill.terms\[0\].divergence: Unknown divergence 'kl'"),
        ("[{divergence: forward_kl, weight: -1}]", r"distill.terms\[0\].weight must be a number >= 0"),
        (
            "[{divergence: forward_kl}, {divergence: sinkd, temperature: 0}]",
            r"distill.terms\[1\].temperature must be",
        ),
        ("[{divergence: {name: sinkd, lam: -1}}]", r"bad distill.terms\[0\].divergence: .*lam"),
        ("[{divergence: mmd}]", r"distill.terms\[0\].divergence=mmd compares sets of samples"),
    ],
)
def test_bad_terms_fail_in_one_sentence_naming_the_key(compose_cfg, terms, key):
    cfg = compose_cfg("experiment=kd/digits", f"+distill.terms={terms}")
    with pytest.raises(ConfigError, match=key):
        build_terms(cfg.distill, cfg)
