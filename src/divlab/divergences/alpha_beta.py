"""Alpha-beta divergence of ABKD (Wang et al., ICML 2025), after Cichocki, Cruces & Amari (2011), Eq. (4)-(5).

For alpha, beta, alpha + beta != 0, per class (P = teacher, Q = student):

    d = -1/(alpha beta) * ( p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b) )

with the closed forms at the singular points (all continuous limits of the above):

    beta = 0:            1/a^2 (p^a log(p^a / q^a) - p^a + q^a)        (a = 1: forward KL(P||Q))
    alpha = 0:           1/b^2 (q^b log(q^b / p^b) - q^b + p^b)        (b = 1: reverse KL(Q||P))
    alpha = -beta != 0:  1/a^2 (log(q^a / p^a) + (q^a / p^a)^-1 - 1)
    alpha = beta = 0:    1/2 (log p - log q)^2

On normalised P, Q it is an f-divergence only when alpha + beta = 1, where it equals Amari's
alpha-divergence with the same alpha (`alpha`); `f`, `f_prime` and `weight` exist only there.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import (
    check_pair,
    check_range,
    check_reduction,
    log_probs,
    position_mask,
    reduce,
    sanitize,
)
from .fdivergences import AmariAlpha
from .registry import register


@register("alpha_beta")
class AlphaBeta(nn.Module):
    """ABKD's alpha-beta divergence D_AB(P||Q), summed over classes, per position."""

    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = False
    owns_temperature = False  # a KD task divides both logits by its T first
    symmetric = False

    def __init__(
        self,
        *,
        alpha: float = 0.5,  # alpha, any real; (1, 0) is forward_kl, (0, 1) is reverse_kl
        beta: float = 0.5,  # beta, any real; alpha + beta = 1 is Amari's alpha-divergence
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__()
        self.alpha = check_range(self.name, "alpha", alpha)
        self.beta = check_range(self.name, "beta", beta)
        self.reduction = check_reduction(self.name, reduction)

    # f-divergence pieces, only on the line alpha + beta = 1 -----------------------
    def _amari(self) -> AmariAlpha:
        if self.alpha + self.beta != 1.0:
            raise NotImplementedError(
                f"alpha_beta is an f-divergence only when alpha + beta == 1 (got {self.alpha} + {self.beta}); "
                "use get_divergence('alpha', alpha=...) there."
            )
        return AmariAlpha(alpha=self.alpha)

    def f(self, u):
        return self._amari().f(u)

    def f_prime(self, u):
        return self._amari().f_prime(u)

    def weight(self, r):
        return self._amari().weight(r)

    # the divergence -----------------------------------------------------------------
    def pointwise(self, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        a, b = self.alpha, self.beta
        if a == 0.0 and b == 0.0:
            return 0.5 * (lp - lq) ** 2
        if b == 0.0:
            pa, qa = torch.exp(a * lp), torch.exp(a * lq)
            return (pa * a * (lp - lq) - pa + qa) / a**2
        if a == 0.0:
            pb, qb = torch.exp(b * lp), torch.exp(b * lq)
            return (qb * b * (lq - lp) - qb + pb) / b**2
        if a + b == 0.0:
            x = a * (lp - lq)
            return (torch.expm1(x) - x) / a**2
        s = a + b
        cross = torch.exp(a * lp + b * lq)
        return -(cross - a / s * torch.exp(s * lp) - b / s * torch.exp(s * lq)) / (a * b)

    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        """Per-position D_AB(P||Q); `labels` is accepted for a uniform KD call and ignored."""
        check_pair(self.name, target_logits, model_logits)
        valid = position_mask(self.name, mask, target_logits, dim)
        lp = log_probs(sanitize(target_logits, valid, dim), dim)
        lq = log_probs(sanitize(model_logits, valid, dim), dim)
        # classes masked (-inf) in both contribute exactly 0; zero them before any power is taken
        floor = torch.finfo(lp.dtype).min
        both = (lp == floor) & (lq == floor)
        zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
        terms = self.pointwise(torch.where(both, zero, lp), torch.where(both, zero, lq))
        values = torch.where(both, zero, terms).sum(dim)
        return reduce(values, valid, check_reduction(self.name, reduction or self.reduction))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"
