"""SinKD (Cui et al., LREC-COLING 2024, "Sinkhorn Distance Minimization for Knowledge
Distillation"), batch-wise reformulation.

The B rows of the student and teacher probability matrices (softmax(z / T), one row per
sample) are two uniform point clouds in the probability simplex; the loss is lambda times the
Sinkhorn transport cost between them, with the L1 cost C_ij = |q_i - p_j|_1 between student row
i and teacher row j:

    L_SinKD = lambda * <T*, C>,   T* = Sinkhorn(C, 1/B, 1/B; epsilon, iterations)

Gradients flow through the unrolled iterations. This is the Sinkhorn term alone: the paper's
total objective adds it to the task loss (and, optionally, to sample-wise KL terms), which the
task composes. Under DDP each rank uses its own per-rank batch (no all-gather), so the value
depends on the per-device batch size, as in the paper's single-batch formulation.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import check_int, check_pair, check_range, compute_dtype, position_mask
from .registry import register
from .sinkhorn import sinkhorn_cost


@register("sinkd")
class SinKD(nn.Module):
    """lambda * Sinkhorn cost between the rows of student and teacher probabilities; one value per batch."""

    kind = "batch"  # call shape: see divlab.divergences.__init__
    needs_labels = False

    def __init__(
        self,
        *,
        temperature: float = 1.0,   # T > 0 on teacher and student logits
        epsilon: float = 0.1,       # entropic regularisation of the Sinkhorn plan (L1 costs lie in [0, 2])
        iterations: int = 20,       # Sinkhorn iterations
        lam: float = 1.0,           # lambda, the weight of the Sinkhorn term
    ):
        super().__init__()
        self.temperature = check_range(self.name, "temperature", temperature, 0, None, lo_open=True)
        self.epsilon = check_range(self.name, "epsilon", epsilon, 0, None, lo_open=True)
        self.iterations = check_int(self.name, "iterations", iterations)
        self.lam = check_range(self.name, "lam", lam, 0, None)

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        """0-dim loss over the batch; positions (all dims but `dim`) are the rows; masked rows are
        dropped; `labels` and `reduction` are accepted for a uniform KD call and ignored."""
        check_pair(self.name, target_logits, model_logits)
        valid = position_mask(self.name, mask, target_logits, dim)
        t = target_logits.to(compute_dtype(target_logits)).movedim(dim, -1)
        s = model_logits.to(compute_dtype(model_logits)).movedim(dim, -1)
        t, s = t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1])
        if valid is not None:
            keep = valid.reshape(-1)
            t, s = t[keep], s[keep]
        if t.shape[0] == 0:
            return (s * 0).sum()
        p = torch.softmax(t / self.temperature, dim=-1)
        q = torch.softmax(s / self.temperature, dim=-1)
        cost = torch.cdist(q, p, p=1.0)  # (B_student, B_teacher) L1 costs, without a B x B x C tensor
        value, _ = sinkhorn_cost(cost, epsilon=self.epsilon, iterations=self.iterations)
        return self.lam * value

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, epsilon={self.epsilon}, iterations={self.iterations}, lam={self.lam}"
