"""Plackett-Luce Distillation (Bassam, Zhu & Bian 2025, "PLD: A Choice-Theoretic List-Wise
Knowledge Distillation", Sec. 3).

The teacher-optimal permutation pi puts the true class first, then every other class in
descending teacher logit. Under the Plackett-Luce model with the student's logits s as worths,
each rank k is a choice of pi_k among the classes not yet chosen; PLD weights the negative
log-likelihood of each choice by the teacher's confidence in the chosen class:

    L_PLD = sum_k w_k ( logsumexp_{j >= k} s_{pi_j} - s_{pi_k} ),   w_k = softmax(t / tau)_{pi_k}

computed with one reverse `logcumsumexp`. There is no separate cross-entropy term: one-hot
weights on rank 1 give exactly the CE with the true label, uniform weights give ListMLE.

The temperature tau acts on the teacher's weights only: the student's logits s enter unscaled and
there is no T^2 factor, so the loss owns its temperature (`owns_temperature`) and a KD task passes
it the raw logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import check_range, check_reduction, reduce
from .kd_common import prepare_with_labels
from .registry import register

_NEG = -1e30  # stands in for -inf (masked classes): exp underflows to 0, differences stay finite


def teacher_optimal_permutation(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class indices (..., C): the label first, then the rest by descending teacher logit."""
    key = teacher_logits.detach().clone()
    key.scatter_(-1, labels.unsqueeze(-1), float("inf"))
    return torch.argsort(key, dim=-1, descending=True, stable=True)


def plackett_luce_loss(
    scores: torch.Tensor, permutation: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """sum_k weights_k * (logsumexp_{j>=k} scores[perm_j] - scores[perm_k]) over the last dim.

    `weights` are given per rank (already in permutation order). With unit weights this is the
    ListMLE negative log-likelihood of `permutation`.
    """
    s = scores.clamp(min=_NEG).gather(-1, permutation)
    tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)
    return (weights * (tail - s)).sum(-1)


@register("pld")
class PLD(nn.Module):
    """Confidence-weighted Plackett-Luce loss of the teacher-optimal permutation; needs labels=."""

    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = True  # call with labels=<class ids>
    owns_temperature = True  # takes raw logits: tau scales the teacher's weights only, no T^2

    def __init__(
        self,
        *,
        tau: float = 1.0,  # temperature of the teacher weights softmax(t / tau), > 0
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__()
        self.tau = check_range(self.name, "tau", tau, 0, None, lo_open=True)
        self.reduction = check_reduction(self.name, reduction)

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        zt, zs, labels, valid = prepare_with_labels(self.name, target_logits, model_logits, labels, mask, dim)
        perm = teacher_optimal_permutation(zt, labels)
        weights = torch.softmax(zt / self.tau, dim=-1).gather(-1, perm)
        loss = plackett_luce_loss(zs, perm, weights)
        return reduce(loss, valid, check_reduction(self.name, reduction or self.reduction))

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"
