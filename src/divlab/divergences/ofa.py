"""OFA-KD's target-enhanced logit loss (Hao et al., NeurIPS 2023, "One-for-All", Sec. 3.3).

With teacher probabilities p, student probabilities q (both at temperature T) and true class y:

    L_OFA = -sum_c w_c log q_c,   w_y = (1 + p_y)^eps - 1,   w_c = p_c^eps (c != y)

eps = 1 is the soft-label cross-entropy (KD up to the teacher's entropy); eps > 1 enlarges the
target term and damps the non-target terms (adaptive target enhancement). The non-target
exponent follows the authors' released implementation. Computed in log space:
w_y = expm1(eps log1p(p_y)), w_c = exp(eps log p_c).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import check_range, check_reduction, log_probs, reduce
from .kd_common import prepare_with_labels
from .registry import register


@register("ofa")
class OFA(nn.Module):
    """-sum_c w_c log q_c with the target-enhanced weights above, per position; needs labels=."""

    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = True  # call with labels=<class ids>
    owns_temperature = True  # takes raw logits: its own T on both, no T^2 (OFAKD's ofa_loss)

    def __init__(
        self,
        *,
        epsilon: float = 1.0,  # exponent eps > 0; 1 = soft-label CE, > 1 enhances the target class
        temperature: float = 1.0,  # T > 0 on teacher and student logits
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__()
        self.epsilon = check_range(self.name, "epsilon", epsilon, 0, None, lo_open=True)
        self.temperature = check_range(self.name, "temperature", temperature, 0, None, lo_open=True)
        self.reduction = check_reduction(self.name, reduction)

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        zt, zs, labels, valid = prepare_with_labels(self.name, target_logits, model_logits, labels, mask, dim)
        lp = log_probs(zt / self.temperature, -1)
        lq = log_probs(zs / self.temperature, -1)
        is_target = torch.zeros_like(lp, dtype=torch.bool).scatter_(-1, labels.unsqueeze(-1), True)
        w_target = torch.expm1(self.epsilon * torch.log1p(lp.exp()))
        w_other = torch.exp(self.epsilon * lp)
        w = torch.where(is_target, w_target, w_other)
        loss = -(w * lq).sum(-1)
        return reduce(loss, valid, check_reduction(self.name, reduction or self.reduction))

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, temperature={self.temperature}, reduction={self.reduction!r}"
