"""The big-vocabulary path equals the plain path, in values and gradients."""

from __future__ import annotations

import pytest
import torch

from divlab.divergences import (
    ChunkedDivergence,
    FusedLinearDivergence,
    chunked_divergence,
    fused_linear_divergence,
    get_divergence,
)

N, V, H = 37, 50, 16  # 37 tokens: chunks of 8 leave a ragged last chunk


def _setup(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype) / 2
    th = torch.randn(N, H, generator=g, dtype=dtype)
    tw = torch.randn(V, H, generator=g, dtype=dtype) / 2
    mask = torch.rand(N, generator=g) > 0.2
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::5] = -100  # ignored positions: the "mean" must count only valid ones, as the plain path does
    return h, w, th, tw, mask, labels


def _close(a, b, dtype):
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    # elementwise rtol, plus atol = rtol * max|b|: entries that are sums of cancelling terms (softmax
    # backward) carry rounding of the order of the largest entry, not of their own size
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max()) + 1e-12)


CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("generalized_js", {"beta": 0.3}),
    ("dkd", {}),
    ("pld", {}),
    ("alpha_beta", {"alpha": 0.4, "beta": 0.4}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_chunked_equals_plain(case, reduction, dtype):
    name, params = case
    h, w, th, tw, mask, labels = _setup(dtype)
    div = get_divergence(name, **params)
    kw = {"labels": labels} if name in ("dkd", "pld") else {}
    t_logits = th @ tw.t()
    s1 = (h @ w.t()).requires_grad_(True)
    plain = div(t_logits, s1, mask=mask, reduction=reduction, **kw)
    plain.backward()
    s2 = (h @ w.t()).requires_grad_(True)
    chunked = chunked_divergence(t_logits, s2, div, mask=mask, chunk_size=8, reduction=reduction, **kw)
    (3.0 * chunked).backward()  # a non-unit upstream gradient
    _close(chunked, plain, dtype)
    _close(s2.grad, 3.0 * s1.grad, dtype)
    assert (s2.grad[~mask] == 0).all()


@pytest.mark.parametrize("teacher", ["logits", "hidden"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fused_linear_equals_plain(case, teacher):
    name, params = case
    dtype = torch.float32
    h, w, th, tw, mask, labels = _setup(dtype, seed=1)
    div = get_divergence(name, **params)
    kw = {"labels": labels} if name in ("dkd", "pld") else {}
    h1, w1 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    plain = div(th @ tw.t(), h1 @ w1.t(), mask=mask, reduction="mean", **kw)
    plain.backward()
    h2, w2 = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    tkw = (
        {"teacher_logits": th @ tw.t()}
        if teacher == "logits"
        else {"teacher_hidden": th, "teacher_weight": tw}
    )
    fused = fused_linear_divergence(
        h2, w2, divergence=div, mask=mask, chunk_size=8, reduction="mean", **tkw, **kw
    )
    fused.backward()
    _close(fused, plain, dtype)
    _close(h2.grad, h1.grad, dtype)
    _close(w2.grad, w1.grad, dtype)


def test_modules_default_chunking_3d_inputs_and_upstream_scale():
    h, w, th, tw, mask, _ = _setup(torch.float64, seed=2)
    h3, th3, m3 = h[:36].reshape(4, 9, H), th[:36].reshape(4, 9, H), mask[:36].reshape(4, 9)
    fused = FusedLinearDivergence("js", reduction="sum")
    ref = get_divergence("js", reduction="sum")(th3 @ tw.t(), h3 @ w.t(), mask=m3)
    _close(fused(h3, w, teacher_hidden=th3, teacher_weight=tw, mask=m3), ref, torch.float64)
    chunked = ChunkedDivergence("js", reduction="sum")
    _close(chunked(th3 @ tw.t(), h3 @ w.t(), mask=m3), ref, torch.float64)


def test_bfloat16_logits_get_bfloat16_gradients_close_to_float32():
    h, w, th, tw, mask, _ = _setup(torch.float32, seed=3)
    t = (th @ tw.t()).bfloat16()
    s = (h @ w.t()).bfloat16().requires_grad_(True)
    out = chunked_divergence(t, s, "forward_kl", mask=mask, chunk_size=8)
    out.backward()
    assert out.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    s32 = s.detach().float().requires_grad_(True)
    ref = get_divergence("forward_kl")(t.float(), s32, mask=mask, reduction="mean")
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.float(), s32.grad, rtol=1e-2, atol=1e-4)


def test_bad_inputs_are_rejected():
    h, w, th, tw, _, _ = _setup()
    with pytest.raises(ValueError, match="categorical"):
        chunked_divergence(th @ tw.t(), h @ w.t(), "sinkd")
    with pytest.raises(ValueError, match="reduction"):
        chunked_divergence(th @ tw.t(), h @ w.t(), reduction="none")
    with pytest.raises(ValueError, match="teacher"):
        fused_linear_divergence(h, w)
    with pytest.raises(ValueError, match="width"):
        fused_linear_divergence(h[:, :5], w, teacher_logits=th @ tw.t())


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js"])
def test_garbage_at_masked_tokens_and_masked_classes(name):
    """NaN logits at masked tokens and -inf classes: finite, equal to the plain path (closed-form
    and autograd chunk paths alike)."""
    h, w, th, tw, mask, _ = _setup(torch.float64, seed=4)
    t, s = th @ tw.t(), h @ w.t()
    t[:, -4:] = float("-inf")
    s[:, -4:] = float("-inf")
    t[~mask] = float("nan")
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    plain = get_divergence(name)(t, s1, mask=mask, reduction="mean")
    plain.backward()
    chunked = chunked_divergence(t, s2, name, mask=mask, chunk_size=8)
    chunked.backward()
    assert torch.isfinite(chunked) and torch.isfinite(s2.grad).all()
    _close(chunked, plain, torch.float64)
    _close(s2.grad, s1.grad, torch.float64)
