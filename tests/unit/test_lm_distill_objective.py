"""objectives/lm_distill.py: eq. (1) through the chunked path equals the plain logits path, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from divlab.divergences import get_divergence
from divlab.objectives.lm_distill import TokenDistillLoss, chunked_nll

DIVERGENCES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("total_variation", {}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.1}),
    ("generalized_js", {"beta": 0.5}),
]


def tensors(seed=0, n=37, h=8, v=50):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    sw = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    th, tw = (
        torch.randn(n, 6, generator=g, dtype=torch.float64),
        torch.randn(v, 6, generator=g, dtype=torch.float64),
    )
    y = torch.randint(0, v, (n,), generator=g)
    return sh, sw, th, tw, y


def test_chunked_nll_equals_cross_entropy_value_and_gradient():
    sh, sw, _, _, y = tensors()
    plain = F.cross_entropy(sh @ sw.t(), y)
    gh, gw = torch.autograd.grad(plain, (sh, sw))
    chunked = chunked_nll(sh, sw, y, rows=5)  # 37 rows: 8 chunks, the last one short
    ch, cw = torch.autograd.grad(chunked, (sh, sw))
    assert torch.allclose(chunked, plain, atol=1e-12)
    assert torch.allclose(ch, gh, atol=1e-12) and torch.allclose(cw, gw, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", DIVERGENCES)
@pytest.mark.parametrize("temperature,t_squared", [(1.0, False), (2.0, True)])
def test_loss_equals_plain_path(name, kwargs, temperature, t_squared):
    sh, sw, th, tw, y = tensors()
    div = get_divergence(name, **kwargs)
    loss = TokenDistillLoss(
        divergence=div,
        ce_weight=0.3,
        kd_weight=0.7,
        temperature=temperature,
        t_squared=t_squared,
        chunk_rows=4,
    )
    out = loss(student_hidden=sh, student_weight=sw, targets=y, teacher_hidden=th, teacher_weight=tw)
    got = torch.autograd.grad(out["loss"], (sh, sw))
    s_logits, t_logits = sh @ sw.t(), th @ tw.t()
    kd = div(t_logits / temperature, s_logits / temperature, reduction="mean")
    plain = 0.3 * F.cross_entropy(s_logits, y) + 0.7 * (temperature**2 if t_squared else 1.0) * kd
    want = torch.autograd.grad(plain, (sh, sw))
    assert torch.allclose(out["loss"].double(), plain, atol=1e-9)
    assert torch.allclose(out["kd"].double(), kd, atol=1e-9)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-9)


def test_on_policy_batches_drop_the_nll_term_but_log_it():
    sh, sw, th, tw, y = tensors(seed=1)
    loss = TokenDistillLoss(divergence=get_divergence("forward_kl"), ce_weight=1.0, kd_weight=1.0)
    out = loss(
        student_hidden=sh, student_weight=sw, targets=y, teacher_hidden=th, teacher_weight=tw, use_ce=False
    )
    assert torch.allclose(out["loss"].double(), out["kd"].double())
    assert out["ce"] > 0
    sft = TokenDistillLoss(divergence=get_divergence("forward_kl"), ce_weight=1.0, kd_weight=0.0)
    out = sft(student_hidden=sh, student_weight=sw, targets=y, teacher_hidden=None, teacher_weight=None)
    assert torch.allclose(out["loss"].double(), F.cross_entropy(sh @ sw.t(), y)) and out["kd"] == 0


@pytest.mark.parametrize("name,kwargs", [("generalized_js", {"beta": 0.5}), ("forward_kl", {})])
def test_loss_under_inference_mode(name, kwargs):
    """Validation and test run under inference mode, where no gradient can be formed: the value is the same."""
    sh, sw, th, tw, y = tensors(seed=2)
    loss = TokenDistillLoss(divergence=get_divergence(name, **kwargs), ce_weight=0.5, kd_weight=1.0)
    with torch.no_grad():
        want = loss(student_hidden=sh, student_weight=sw, targets=y, teacher_hidden=th, teacher_weight=tw)
    with torch.inference_mode():
        got = loss(student_hidden=sh, student_weight=sw, targets=y, teacher_hidden=th, teacher_weight=tw)
    assert torch.allclose(got["loss"], want["loss"]) and not got["loss"].requires_grad
