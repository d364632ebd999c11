"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

Sec. 3.1 rewrites classical KD at temperature T with b = [p_t, 1 - p_t] (target vs. rest) and
p_hat = the distribution over non-target classes:

    KD = KL(b^T || b^S) + (1 - p_t^T) KL(p_hat^T || p_hat^S) = TCKD + (1 - p_t^T) NCKD

and Sec. 3.3 decouples the two terms: DKD = alpha * TCKD + beta * NCKD (times T^2, as in
classical KD). The warm-up of the DKD weight over the first epochs is the task's job.
Everything is computed in log space: log(1 - p_t) = logsumexp(non-target) - logsumexp(all).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import check_range, check_reduction, log_probs, reduce
from .kd_common import prepare_with_labels
from .registry import register


@register("dkd")
class DKD(nn.Module):
    """T^2 (alpha TCKD + beta NCKD) per position; needs labels=."""

    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = True  # call with labels=<class ids>
    owns_temperature = True  # takes raw logits: its own T on both, T^2 included (mdistiller's dkd_loss)

    def __init__(
        self,
        *,
        alpha: float = 1.0,  # weight of TCKD (target vs. non-target binary KL)
        beta: float = 8.0,  # weight of NCKD (KL among non-target classes); paper's CIFAR-100 value
        temperature: float = 4.0,  # T > 0
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__()
        self.alpha = check_range(self.name, "alpha", alpha, 0, None)
        self.beta = check_range(self.name, "beta", beta, 0, None)
        self.temperature = check_range(self.name, "temperature", temperature, 0, None, lo_open=True)
        self.reduction = check_reduction(self.name, reduction)

    def parts(self, target_logits, model_logits, labels, mask=None, dim: int = -1):
        """(tckd, nckd, p_t) per position at temperature T, without T^2 and without weights; also
        returns the validity mask. KD(T) = tckd + (1 - p_t) * nckd holds exactly (Sec. 3.1)."""
        zt, zs, labels, valid = prepare_with_labels(self.name, target_logits, model_logits, labels, mask, dim)
        zt, zs = zt / self.temperature, zs / self.temperature
        idx = labels.unsqueeze(-1)
        is_target = torch.zeros_like(zt, dtype=torch.bool).scatter_(-1, idx, True)
        neg_inf = torch.full((), float("-inf"), dtype=zt.dtype, device=zt.device)

        def binary(z):
            lse = torch.logsumexp(z, -1)
            log_pt = z.gather(-1, idx).squeeze(-1) - lse
            log_rest = torch.logsumexp(torch.where(is_target, neg_inf, z), -1) - lse
            floor = torch.finfo(z.dtype).min
            return log_pt.clamp(min=floor), log_rest.clamp(min=floor)

        lpt_t, lrest_t = binary(zt)
        lpt_s, lrest_s = binary(zs)
        tckd = lpt_t.exp() * (lpt_t - lpt_s) + lrest_t.exp() * (lrest_t - lrest_s)
        lp_hat = log_probs(torch.where(is_target, neg_inf, zt), -1)
        lq_hat = log_probs(torch.where(is_target, neg_inf, zs), -1)
        nckd = (lp_hat.exp() * (lp_hat - lq_hat)).sum(-1)
        return tckd, nckd, lpt_t.exp(), valid

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        tckd, nckd, _, valid = self.parts(target_logits, model_logits, labels, mask, dim)
        loss = self.temperature**2 * (self.alpha * tckd + self.beta * nckd)
        return reduce(loss, valid, check_reduction(self.name, reduction or self.reduction))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, reduction={self.reduction!r}"
