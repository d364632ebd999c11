"""SinKD (Cui et al., LREC-COLING 2024, "Sinkhorn Distance Minimization for Knowledge
Distillation"), batch-wise reformulation, with the scale of the authors' code (2018cx/SinKD, loss.py).

The B rows of the student and teacher probability matrices (softmax(z / T), one row per sample)
are compared through the L1 cost C_ij = |q_i - p_j|_1 between student row i and teacher row j.
Starting from the Gibbs kernel K = exp(-C / epsilon), the reference plan alternately scales the
rows of K to sum 1, then its columns to sum 1, `iterations` times (in that order), and the loss is

    L_SinKD = lambda * <T, C>,   T = (column-normalise . row-normalise)^iterations (K)

The plan has unit row and column sums, total mass B (not 1), so at the same lambda the value is
about B times the Sinkhorn cost with uniform 1/B marginals. Defaults are the paper's and the code's:
T = 2, epsilon = 0.1, 20 iterations, lambda = 1e-3. Computed in the log domain (logsumexp
normalisations), which equals the reference's linear-domain iterations where those do not underflow.
plan="pot" gives divlab's earlier form instead: POT's `sinkhorn2` with uniform marginals 1/B
(mass 1, POT's iteration order), via `sinkhorn_cost`.

Gradients flow through the unrolled iterations. This is the Sinkhorn term alone: the paper's total
objective (1 - a) CE + a KD + b L_SinKD is the distill task's `distill.terms` (conf/experiment/kd/
digits_sinkd.yaml). Under DDP each rank uses its own per-rank batch (no all-gather), so the value
depends on the per-device batch size, as in the paper's single-batch formulation.
"""

from __future__ import annotations

import torch
from torch import nn

from divlab.errors import ConfigError

from .base import check_int, check_pair, check_range, compute_dtype, position_mask
from .registry import register
from .sinkhorn import sinkhorn_cost

PLANS = ("reference", "pot")


def reference_plan(cost: torch.Tensor, *, epsilon: float, iterations: int) -> torch.Tensor:
    """exp(-C / eps) with its rows, then its columns, scaled to sum 1, `iterations` times; in log space."""
    log_plan = -cost / epsilon
    for _ in range(iterations):
        log_plan = log_plan - torch.logsumexp(log_plan, dim=-1, keepdim=True)
        log_plan = log_plan - torch.logsumexp(log_plan, dim=-2, keepdim=True)
    return log_plan.exp()


@register("sinkd")
class SinKD(nn.Module):
    """lambda * <T, C> between the rows of student and teacher probabilities; one value per batch."""

    kind = "batch"  # call shape: see divlab.divergences.__init__
    needs_labels = False
    owns_temperature = True  # takes raw logits: softmax(z / T) with its own T, no T^2

    def __init__(
        self,
        *,
        temperature: float = 2.0,  # T > 0 on teacher and student logits (the reference code's fixed T = 2)
        epsilon: float = 0.1,  # entropic regularisation of the plan (L1 costs lie in [0, 2])
        iterations: int = 20,  # Sinkhorn iterations (each: rows, then columns)
        lam: float = 1e-3,  # lambda, the weight of the Sinkhorn term (the reference's 0.001)
        plan: str = "reference",  # "reference": unit row/column sums (mass B); "pot": marginals 1/B (mass 1)
    ):
        super().__init__()
        self.temperature = check_range(self.name, "temperature", temperature, 0, None, lo_open=True)
        self.epsilon = check_range(self.name, "epsilon", epsilon, 0, None, lo_open=True)
        self.iterations = check_int(self.name, "iterations", iterations)
        self.lam = check_range(self.name, "lam", lam, 0, None)
        if plan not in PLANS:
            raise ConfigError(
                f"Divergence {self.name!r}: plan must be one of {', '.join(PLANS)}, got {plan!r}."
            )
        self.plan = plan

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
        if self.plan == "pot":
            value, _ = sinkhorn_cost(cost, epsilon=self.epsilon, iterations=self.iterations)
        else:
            value = (reference_plan(cost, epsilon=self.epsilon, iterations=self.iterations) * cost).sum()
        return self.lam * value

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, epsilon={self.epsilon}, iterations={self.iterations}, "
            f"lam={self.lam}, plan={self.plan!r}"
        )
