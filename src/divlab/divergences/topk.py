"""Token divergences on a teacher's top-k support with the tail folded into one bucket.

A teacher stored as its k most probable tokens per position S = {s_1..s_k}, their log-probabilities
log p_s and the log of the remaining mass log p_tail = log(1 - sum_{s in S} p_s) defines two distributions
over the k + 1 outcomes S and "tail":

    P_k = (p_{s_1}, ..., p_{s_k}, p_tail),    Q_k = (q_{s_1}, ..., q_{s_k}, 1 - sum_{s in S} q_s)        (1)

and the loss is D(P_k || Q_k) per position for any per-position categorical divergence D of the library,
called on the (N, k + 1) log-probabilities (they are valid logits: log_softmax leaves them unchanged).
This follows the tail bucket of TRL's distillation trainers (`loss_top_k` with `loss_add_tail=True`:
the student's log-probabilities gathered at the teacher's top-k ids plus log(1 - their sum)). Q's tail
is computed as logsumexp of the student's logits outside S minus their logsumexp over the vocabulary,
so it never takes the log of a difference. When k = V the tail is empty on both sides and is dropped:
then (1) is the full distribution and the loss equals the full-vocabulary loss. For k < V and any
f-divergence, merging outcomes cannot increase D (the data-processing inequality), so D(P_k || Q_k) <=
D(P || Q); the gap is the divergence hidden inside the tail.

The student's (N, V) logits never exist at once: they are made chunk by chunk from its hidden states and
output weight, and each chunk's gradient is computed in the forward pass (like fused_linear_divergence in
divlab.divergences.chunked), so the backward pass recomputes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from divlab.errors import ConfigError

from .base import compute_dtype
from .chunked import _chunk_rows, _resolve, saved_linear_grads


@torch.no_grad()
def topk_log_probs(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ids (N, k'), log-probabilities (N, k'), log tail mass (N,)) of softmax(logits (N, V)) in float32
    (float64 kept), k' = min(k, V), most probable first; the tail is -inf when k' = V (no mass left)."""
    logp = F.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
    k = min(int(k), logp.shape[-1])
    top, ids = logp.topk(k, dim=-1)
    if k == logp.shape[-1]:
        tail = torch.full(top.shape[:-1], float("-inf"), dtype=top.dtype, device=top.device)
    else:
        tail = logp.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
    return ids, top, tail


def bucket_log_probs(model_logits: Tensor, ids: Tensor, *, with_tail: bool) -> Tensor:
    """Q_k of eq. (1): log q at `ids` (N, k) and, with_tail, log(1 - sum of those q) as a last column."""
    logits = model_logits.to(compute_dtype(model_logits))
    lse = logits.logsumexp(dim=-1, keepdim=True)
    top = logits.gather(-1, ids) - lse
    if not with_tail:
        return top
    tail = logits.scatter(-1, ids, float("-inf")).logsumexp(dim=-1, keepdim=True) - lse
    return torch.cat([top, tail], dim=-1)


def _target(log_probs: Tensor, tail: Tensor, with_tail: bool, dtype: torch.dtype) -> Tensor:
    t = log_probs.to(dtype)
    return torch.cat([t, tail.to(dtype)[:, None]], dim=-1) if with_tail else t


class _FusedTopk(torch.autograd.Function):
    """Per chunk: the student's logits z, Q_k of eq. (1), D and its gradient g w.r.t. the k + 1 bucket
    log-probabilities (autograd on the small (n, k + 1) tensor), then, in closed form,
    dL/dz = scatter(g_top at S) + g_tail * softmax(z outside S) - (sum g) * softmax(z)
    (from log q_s = z_s - lse(z) and log q_tail = lse(z outside S) - lse(z)); gradients w.r.t. the hidden
    states and the weight are accumulated in the forward pass, so no logits are kept or recomputed."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, target, div, rows, with_tail, scale):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = compute_dtype(hidden)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=dtype) if need_w else None
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        k = ids.shape[1]
        for lo in range(0, hidden.shape[0], rows):
            h, i, t = hidden[lo : lo + rows].detach(), ids[lo : lo + rows], target[lo : lo + rows]
            z = (h @ weight.detach().t()).to(dtype)
            lse = z.logsumexp(dim=-1, keepdim=True)
            parts = [z.gather(-1, i) - lse]
            if with_tail:
                z_out = z.scatter(-1, i, float("-inf"))
                lse_out = z_out.logsumexp(dim=-1, keepdim=True)
                parts.append(lse_out - lse)
            s = torch.cat(parts, dim=-1).requires_grad_(need_h or need_w)
            with torch.enable_grad():
                value = div(t, s, reduction="sum")
            if need_h or need_w:
                g = torch.autograd.grad(value, s)[0]
                gz = (z - lse).exp_().mul_(-g.sum(dim=-1, keepdim=True))
                gz.scatter_add_(-1, i, g[:, :k])
                if with_tail:
                    gz.add_((z_out - lse_out).exp_().mul_(g[:, k:]))  # exp(-inf) = 0 on S
                gz.mul_(scale)
                if need_h:
                    grad_h[lo : lo + rows] = (gz @ weight.detach().to(dtype)).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(gz.t(), h.to(dtype))
            total += value.detach().double()
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        ctx.used = False
        return (total * scale).to(compute_dtype(hidden))

    @staticmethod
    def backward(ctx, grad_out):
        return saved_linear_grads(ctx, grad_out, "fused_linear_topk_divergence")


def fused_linear_topk_divergence(
    student_hidden: Tensor,
    student_weight: Tensor,
    *,
    topk_ids: Tensor,
    topk_log_probs: Tensor,
    tail_log_prob: Tensor,
    divergence="forward_kl",
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """D(P_k || Q_k) of eq. (1), Q = softmax(student_hidden (N, H) @ student_weight (V, H).T), the teacher
    given by topk_ids (N, k), topk_log_probs (N, k) and tail_log_prob (N,); "mean" over the N positions or
    "sum". Gradients reach student_hidden and student_weight; the teacher side is a constant."""
    div = _resolve(divergence)
    if getattr(div, "needs_labels", False):
        raise ConfigError(
            f"divergence {getattr(div, 'name', div)!r} reads class labels over the whole vocabulary; the "
            "top-k path has k + 1 outcomes: use a divergence without labels (forward_kl, js, ...)"
        )
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"The top-k path supports reduction 'mean' or 'sum', got {reduction!r}.")
    vocab, width = student_weight.shape
    n, k = topk_ids.shape if topk_ids.ndim == 2 else (-1, -1)
    if (
        student_hidden.shape != (n, width)
        or topk_log_probs.shape != (n, k)
        or tail_log_prob.shape != (n,)
        or not 0 < k <= vocab
    ):
        raise ConfigError(
            f"top-k teacher ids {tuple(topk_ids.shape)}, log-probabilities {tuple(topk_log_probs.shape)} and "
            f"tail {tuple(tail_log_prob.shape)} do not fit student hidden states {tuple(student_hidden.shape)} "
            f"and a vocabulary of {vocab} (expected (N, k), (N, k), (N,) with 0 < k <= V)."
        )
    if n == 0:
        return student_hidden.sum() * 0.0
    with_tail = k < vocab  # k = V: the tail bucket is empty on both sides, and (1) is exact
    dtype = compute_dtype(student_hidden)
    target = _target(topk_log_probs, tail_log_prob, with_tail, dtype).detach()
    h, weight = student_hidden, student_weight
    if not torch.is_grad_enabled():  # no_grad / inference mode: no gradient is computed in the forward pass
        h, weight = h.detach(), weight.detach()
    scale = 1.0 / n if reduction == "mean" else 1.0
    rows = _chunk_rows(chunk_size, vocab)
    return _FusedTopk.apply(h, weight, topk_ids.long(), target, div, rows, with_tail, scale)
