"""Big-vocabulary path: token divergences over N tokens x V classes without N x V working memory.

Two entry points, both returning a scalar ("sum" or "mean" over valid tokens) whose value and
gradients equal the plain path `divergence(target_logits, model_logits, reduction=...)`:

- `chunked_divergence(target_logits, model_logits, ...)`: the logits are given; tokens are
  processed in chunks and each chunk's gradient is computed in the forward pass and written
  into one N x V gradient buffer (custom autograd), so the probabilities, log-probabilities
  and elementwise terms of the plain path (several N x V tensors, kept for backward) are never
  held for more than one chunk.
- `fused_linear_divergence(student_hidden, student_weight, ...)`: the student's logits are
  produced chunk by chunk from its hidden states (N, H) and output weight (V, H) (like Liger's
  fused linear JSD, in plain PyTorch); the gradients w.r.t. hidden states and weight are
  accumulated per chunk, so no N x V tensor of the student exists at any time. The teacher is
  given either as logits (N, V) or, to avoid those too, as hidden states and weight.

Any per-position categorical member works (f-divergences, alpha_beta, hinton_kd, dkd, pld, ofa;
pass labels= for those that read labels). The teacher side is treated as a constant: no
gradient reaches teacher logits, hidden states or weight. Backward may run once per forward.
"""

from __future__ import annotations

import torch
from torch import nn

from divlab.errors import ConfigError

from .base import check_int, compute_dtype
from .registry import get_divergence

_CHUNK_ELEMENTS = 2**25  # default chunk: about this many logits (128 MiB in float32) per chunk


def _resolve(divergence) -> nn.Module:
    div = get_divergence(divergence) if isinstance(divergence, str) else divergence
    if getattr(div, "kind", None) != "categorical":
        raise ConfigError(
            f"The chunked path needs a per-position categorical divergence, got {getattr(div, 'name', div)!r}; "
            "sample and batch-level divergences (sinkd, mmd, ...) cannot be chunked over tokens."
        )
    return div


def _chunk_rows(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    return check_int("chunked", "chunk_size", chunk_size)


def _flatten(name, x, width=None):
    x2 = x.reshape(-1, x.shape[-1])
    if width is not None and x2.shape[-1] != width:
        raise ConfigError(f"{name} has last dim {x2.shape[-1]}, expected {width}.")
    return x2


def _flat_positions(name, tensor, n):
    if tensor is None:
        return None
    tensor = torch.as_tensor(tensor).reshape(-1)
    if tensor.numel() != n:
        raise ConfigError(f"{name} must have one entry per token ({n}), got {tensor.numel()}.")
    return tensor


def _positions(div, mask, labels, n, device):
    """Flat validity mask (or None) and labels; labels < 0 mask positions for members that read labels."""
    valid = _flat_positions("mask", mask, n)
    valid = None if valid is None else valid.to(device).bool()
    labels = _flat_positions("labels", labels, n)
    if labels is not None:
        labels = labels.to(device)
        if getattr(div, "needs_labels", False) and bool((labels < 0).any()):
            valid = labels >= 0 if valid is None else valid & (labels >= 0)
    return valid, labels


def _count(valid, n, reduction):
    if reduction == "sum":
        return 1.0
    if reduction != "mean":
        raise ConfigError(f"The chunked path supports reduction 'sum' or 'mean', got {reduction!r}.")
    count = n if valid is None else int(valid.sum())
    return 1.0 / max(count, 1)


def _chunk_value_and_grad(div, t, s, valid, labels, lo, hi, need_grad):
    """Summed value over the chunk's valid tokens and its gradient w.r.t. the chunk's model
    logits `s` (None when not needed): a member's closed form when it has one
    (`value_and_grad`, forward_kl and reverse_kl), autograd on the member otherwise."""
    fast = getattr(div, "value_and_grad", None)
    v = None if valid is None else valid[lo:hi]
    if fast is not None:
        values, grad = fast(t, s)
        if v is not None:
            zero = torch.zeros((), dtype=values.dtype, device=values.device)
            values, grad = torch.where(v, values, zero), torch.where(v.unsqueeze(-1), grad, zero)
        return values.sum(), (grad.to(s.dtype) if need_grad else None)
    s = s.detach().requires_grad_(need_grad)
    kw = {"mask": v, "reduction": "sum"}
    if labels is not None:
        kw["labels"] = labels[lo:hi]
    with torch.enable_grad():
        value = div(t.detach(), s, **kw)
    grad = torch.autograd.grad(value, s)[0] if need_grad else None
    return value.detach(), grad


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target, model, valid, labels, div, rows, scale):
        n = model.shape[0]
        grad = torch.empty_like(model) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float64, device=model.device)
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            value, g = _chunk_value_and_grad(
                div, target[lo:hi], model[lo:hi], valid, labels, lo, hi, grad is not None
            )
            if grad is not None:
                torch.mul(g, scale, out=grad[lo:hi])
            total += value.double()
        ctx.save_for_backward(grad)
        ctx.used = False
        return (total * scale).to(compute_dtype(model))

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError("chunked_divergence: backward can run only once per forward.")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        if grad is not None and not bool(grad_out == 1):
            grad.mul_(grad_out.to(grad.dtype))  # in place: no second N x V tensor
        return None, grad, None, None, None, None, None


def chunked_divergence(
    target_logits: torch.Tensor,
    model_logits: torch.Tensor,
    divergence="forward_kl",
    *,
    mask=None,
    labels=None,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Scalar divergence over tokens of (..., V) logits, processed in chunks of `chunk_size`
    tokens (default: about 2**25 logits per chunk). Equal to the plain path in value and
    gradient (w.r.t. model_logits); `reduction` is "mean" over valid tokens or "sum"."""
    div = _resolve(divergence)
    if target_logits.shape != model_logits.shape:
        raise ConfigError(
            f"target and model logits must have the same shape, got {tuple(target_logits.shape)} "
            f"and {tuple(model_logits.shape)}."
        )
    t, s = _flatten("target_logits", target_logits), _flatten("model_logits", model_logits)
    n = s.shape[0]
    valid, labels = _positions(div, mask, labels, n, s.device)
    scale = _count(valid, n, reduction)
    if not torch.is_grad_enabled():  # no_grad / inference mode: no gradient is computed in the forward pass
        s = s.detach()
    return _Chunked.apply(t, s, valid, labels, div, _chunk_rows(chunk_size, s.shape[-1]), scale)


class _FusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, teacher, div, rows, scale, valid, labels):
        t_logits, t_hidden, t_weight = teacher
        n = hidden.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros_like(weight, dtype=torch.float32 if weight.dtype != torch.float64 else torch.float64)
            if need_w
            else None
        )
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            h = hidden[lo:hi]
            logits = h.detach() @ weight.detach().t()
            t = t_logits[lo:hi] if t_logits is not None else t_hidden[lo:hi] @ t_weight.t()
            value, g = _chunk_value_and_grad(div, t, logits, valid, labels, lo, hi, need_h or need_w)
            if g is not None:
                g.mul_(scale)
                if need_h:
                    grad_h[lo:hi] = g @ weight
                if need_w:
                    grad_w.addmm_(g.t().to(grad_w.dtype), h.to(grad_w.dtype))
                del g
            del logits, t
            total += value.double()
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        ctx.used = False
        return (total * scale).to(compute_dtype(hidden))

    @staticmethod
    def backward(ctx, grad_out):
        return saved_linear_grads(ctx, grad_out, "fused_linear_divergence")


def saved_linear_grads(ctx, grad_out, name: str) -> tuple:
    """Backward of a fused linear + divergence Function whose forward saved (grad_hidden, grad_weight) and took
    eight inputs: the saved gradients scaled in place by grad_out (once: a second backward has nothing left)."""
    if ctx.used:
        raise RuntimeError(f"{name}: backward can run only once per forward.")
    ctx.used = True
    grad_h, grad_w = ctx.saved_tensors
    if not bool(grad_out == 1):
        for g in (grad_h, grad_w):
            if g is not None:
                g.mul_(grad_out.to(g.dtype))
    return grad_h, grad_w, None, None, None, None, None, None


def fused_linear_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    divergence="forward_kl",
    mask=None,
    labels=None,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """D(P||Q) with Q = softmax(student_hidden @ student_weight.T), never materialising the
    student's (N, V) logits. The teacher P comes from `teacher_logits` (..., V) or from
    `teacher_hidden @ teacher_weight.T` (also chunked). Gradients reach student_hidden and
    student_weight; `reduction` is "mean" over valid tokens or "sum"."""
    div = _resolve(divergence)
    h = _flatten("student_hidden", student_hidden)
    vocab, width = student_weight.shape
    if h.shape[-1] != width:
        raise ConfigError(
            f"student_hidden has width {h.shape[-1]} but student_weight is {tuple(student_weight.shape)} (V, H)."
        )
    n = h.shape[0]
    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_weight is not None:
            raise ConfigError(
                "Give the teacher either as teacher_logits or as teacher_hidden + teacher_weight, not both."
            )
        t_logits = _flatten("teacher_logits", teacher_logits, vocab)
        if t_logits.shape[0] != n:
            raise ConfigError(f"teacher_logits has {t_logits.shape[0]} tokens, the student {n}.")
        teacher = (t_logits, None, None)
    else:
        if teacher_hidden is None or teacher_weight is None:
            raise ConfigError("Give the teacher as teacher_logits or as teacher_hidden + teacher_weight.")
        th = _flatten("teacher_hidden", teacher_hidden)
        if teacher_weight.shape[0] != vocab or th.shape[0] != n or th.shape[-1] != teacher_weight.shape[1]:
            raise ConfigError(
                f"teacher_hidden {tuple(th.shape)} / teacher_weight {tuple(teacher_weight.shape)} do not match "
                f"{n} tokens and the student's vocabulary {vocab}."
            )
        teacher = (None, th.detach(), teacher_weight.detach())
    valid, labels = _positions(div, mask, labels, n, h.device)
    scale = _count(valid, n, reduction)
    if not torch.is_grad_enabled():  # no_grad / inference mode: no gradient is computed in the forward pass
        h, student_weight = h.detach(), student_weight.detach()
    return _FusedLinear.apply(
        h, student_weight, teacher, div, _chunk_rows(chunk_size, vocab), scale, valid, labels
    )


class ChunkedDivergence(nn.Module):
    """Module form of `chunked_divergence` (e.g. for a Hydra config): d(target_logits, model_logits)."""

    def __init__(
        self,
        divergence="forward_kl",  # a registered name or a divergence object
        *,
        chunk_size: int | None = None,  # tokens per chunk; None: about 2**25 logits per chunk
        reduction: str = "mean",  # "mean" over valid tokens | "sum"
    ):
        super().__init__()
        self.divergence = _resolve(divergence)
        self.chunk_size = chunk_size
        self.reduction = reduction

    @property
    def owns_temperature(self) -> bool:
        """The wrapped divergence's: True if it scales the raw logits by a temperature of its own."""
        return bool(self.divergence.owns_temperature)

    def forward(self, target_logits, model_logits, mask=None, *, labels=None):
        return chunked_divergence(
            target_logits,
            model_logits,
            self.divergence,
            mask=mask,
            labels=labels,
            chunk_size=self.chunk_size,
            reduction=self.reduction,
        )


class FusedLinearDivergence(nn.Module):
    """Module form of `fused_linear_divergence`: d(student_hidden, student_weight, teacher_logits=...)."""

    def __init__(
        self,
        divergence="forward_kl",  # a registered name or a divergence object
        *,
        chunk_size: int | None = None,  # tokens per chunk; None: about 2**25 logits per chunk
        reduction: str = "mean",  # "mean" over valid tokens | "sum"
    ):
        super().__init__()
        self.divergence = _resolve(divergence)
        self.chunk_size = chunk_size
        self.reduction = reduction

    def forward(
        self,
        student_hidden,
        student_weight,
        *,
        teacher_logits=None,
        teacher_hidden=None,
        teacher_weight=None,
        mask=None,
        labels=None,
    ):
        return fused_linear_divergence(
            student_hidden,
            student_weight,
            teacher_logits=teacher_logits,
            teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight,
            divergence=self.divergence,
            mask=mask,
            labels=labels,
            chunk_size=self.chunk_size,
            reduction=self.reduction,
        )
