"""Token-level distillation of a language model (task=lm_distill).

For a prompt x and a response y (from the data, from the teacher, or sampled from the student), with
teacher p and student q_theta over the vocabulary at every response position t:

    L = ce_weight * (1/N) sum_t -log q_theta(y_t | y_<t, x)
      + kd_weight * [T^2] * (1/N) sum_t D( p(. | y_<t, x) / T  ||  q_theta(. | y_<t, x) / T )        (1)

N counts the response tokens of the batch. D is any per-position divergence of divlab.divergences
(P = teacher, Q = student; forward_kl, reverse_kl, js, generalized_js, total_variation, skew_kl,
skew_reverse_kl, alpha, alpha_beta, ...). The KD term is Hinton et al. (2015, eq. 2) applied per token;
with D = KL, SKL or SRKL it is DistiLLM's objective (Ko et al. 2024, eqs. 1, 3, 4), with D = JSD(beta)
on responses the student sampled it is GKD's on-policy objective (Agarwal et al. 2024, eq. 4 with
lambda = 1 for those batches; the task mixes on- and off-policy batches with probability lambda).
"/T" divides logits by T; since logits = hidden @ W.T, it divides the hidden states instead.

The student's N x V logits never exist at once: the KD term goes through
`divlab.divergences.fused_linear_divergence` (per-chunk logits and gradients) and the NLL through
`chunked_nll` (per-chunk logits, recomputed in backward). A teacher given as its cached top-k (ids,
log-probabilities, tail mass at temperature T; lm_distill.teacher_outputs=topk) replaces D by D on the k + 1
outcomes "each top-k token" and "the rest" (`divlab.divergences.topk`, eq. 1; exact when k = V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from divlab.divergences.chunked import fused_linear_divergence
from divlab.divergences.topk import fused_linear_topk_divergence

CHUNK_ELEMENTS = 2**23  # logits per chunk (32 MiB in float32): 170 tokens at a 49,152 vocabulary


def chunk_rows(vocab: int, chunk_rows: int | None = None) -> int:
    return int(chunk_rows) if chunk_rows else max(1, CHUNK_ELEMENTS // max(int(vocab), 1))


def _nll_sum(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    logits = hidden @ weight.t()
    if logits.dtype not in (torch.float32, torch.float64):  # half-precision models: the loss in float32
        logits = logits.float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_nll(hidden: Tensor, weight: Tensor, targets: Tensor, *, rows: int | None = None) -> Tensor:
    """Mean next-token NLL of targets (N,) under softmax(hidden (N, H) @ weight (V, H).T), chunk by chunk;
    each chunk's logits are recomputed in backward, so at most one chunk of logits is alive."""
    n = hidden.shape[0]
    if n == 0:
        return hidden.sum() * 0.0
    rows = chunk_rows(weight.shape[0], rows)
    total = hidden.new_zeros((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    for lo in range(0, n, rows):
        h, y = hidden[lo : lo + rows], targets[lo : lo + rows]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            total = total + checkpoint(_nll_sum, h, weight, y, use_reentrant=False)
        else:
            total = total + _nll_sum(h, weight, y)
    return total / n


class TokenDistillLoss(nn.Module):
    """Eq. (1) on the hidden states of the response positions; returns {"loss", "ce", "kd"}."""

    def __init__(
        self,
        *,
        divergence: nn.Module,  # per-position categorical divergence D(P || Q) of the library
        ce_weight: float = 0.0,  # weight of the student's NLL of the response tokens
        kd_weight: float = 1.0,  # weight of the divergence term
        temperature: float = 1.0,  # T > 0: both distributions are softmax(logits / T)
        t_squared: bool = False,  # multiply the divergence by T^2 (Hinton); off in LLM distillation
        chunk_rows: int | None = None,
    ):  # tokens per chunk of logits; None: about 2**23 logits
        super().__init__()
        self.divergence = divergence
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)
        self.temperature = float(temperature)
        self.kd_scale = self.temperature**2 if t_squared else 1.0
        self.chunk_rows = chunk_rows

    def forward(
        self,
        *,
        student_hidden: Tensor,
        student_weight: Tensor,
        targets: Tensor,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_topk: tuple[Tensor, Tensor, Tensor] | None = None,
        use_ce: bool = True,
        use_kd: bool = True,
    ) -> dict[str, Tensor]:
        """student_hidden (N, H) and targets (N,) at the response positions only; the teacher's hidden
        states (N, H') at the same positions (None when kd_weight = 0), or instead teacher_topk = (ids (N, k),
        log-probabilities (N, k), log tail mass (N,)) of the teacher at temperature T. use_ce=False drops the NLL term
        (responses the student sampled are not data); use_kd=False drops the divergence (an NLL-only pass)."""
        zero = student_hidden.sum() * 0.0  # keeps the loss attached to the graph when a term is off
        ce_weight = self.ce_weight if use_ce else 0.0
        with torch.set_grad_enabled(torch.is_grad_enabled() and ce_weight > 0):  # logged either way
            ce = chunked_nll(student_hidden, student_weight, targets, rows=self.chunk_rows)
        kd = zero
        if use_kd and self.kd_weight > 0:
            t = self.temperature
            if teacher_topk is not None:
                ids, log_probs, tail = teacher_topk
                kd = fused_linear_topk_divergence(
                    student_hidden / t,
                    student_weight,
                    topk_ids=ids,
                    topk_log_probs=log_probs,
                    tail_log_prob=tail,
                    divergence=self.divergence,
                    chunk_size=chunk_rows(student_weight.shape[0], self.chunk_rows),
                )
            else:
                kd = fused_linear_divergence(
                    student_hidden / t,
                    student_weight,
                    teacher_hidden=teacher_hidden / t,
                    teacher_weight=teacher_weight,
                    divergence=self.divergence,
                    chunk_size=chunk_rows(student_weight.shape[0], self.chunk_rows),
                )
        loss = self.kd_weight * self.kd_scale * kd + zero
        if ce_weight > 0:
            loss = loss + ce_weight * ce
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}
