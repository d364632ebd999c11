"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", Sec. 2:
soft-target loss T^2 * KL(softmax(z_t / T) || softmax(z_s / T)).

The T^2 factor keeps the gradient scale independent of T (their Sec. 2, last paragraph);
`t2_scale=False` drops it. The hard-label cross-entropy term of the paper is the task's.
"""

from __future__ import annotations

from torch import nn

from .base import check_range, check_reduction, compute_dtype
from .fdivergences import ForwardKL
from .registry import register


@register("hinton_kd")
class HintonKD(nn.Module):
    """T^2 * KL(P_T || Q_T), P_T = softmax(teacher / T), Q_T = softmax(student / T), per position."""

    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = False
    owns_temperature = True  # takes raw logits: divides them by its own T and multiplies by T^2

    def __init__(
        self,
        *,
        temperature: float = 4.0,  # T > 0, applied to teacher and student logits
        t2_scale: bool = True,  # multiply by T^2 (Hinton et al.); False gives the plain KL at T
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__()
        self.temperature = check_range(self.name, "temperature", temperature, 0, None, lo_open=True)
        self.t2_scale = bool(t2_scale)
        self.reduction = check_reduction(self.name, reduction)
        self._kl = ForwardKL()

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        """`labels` is accepted for a uniform KD call and ignored."""
        t = self.temperature
        reduction = check_reduction(self.name, reduction or self.reduction)
        target = target_logits.to(compute_dtype(target_logits)) / t
        model = model_logits.to(compute_dtype(model_logits)) / t
        kl = self._kl(target, model, mask, dim, reduction=reduction)
        return kl * t**2 if self.t2_scale else kl

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, t2_scale={self.t2_scale}, reduction={self.reduction!r}"
