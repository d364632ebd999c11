"""Every f-divergence, defined once by its generator f (DESIGN.md, "the one idea").

D_f(P||Q) = sum_x Q(x) f(P(x)/Q(x)), P = target/teacher, Q = model/student, r = P/Q.
Each member gives f, f', h(r) = r**2 f''(r) and the log-space summand Q f(P/Q);
lp, lq below are log P, log Q, p, q their exponentials, lr = lp - lq = log r.
The members measured against a mixture of P and Q (generalized_js, skew KLs, softened reverse KL,
chi^2-mixture) are in mixtures.py.
"""

from __future__ import annotations

import torch

from .base import LOG2, FDivergence, check_range, compute_dtype, where_safe, xlogx
from .registry import register


@register("forward_kl")
class ForwardKL(FDivergence):
    """KL(P||Q) = sum P log(P/Q): mass-covering, the classic KD / MLE direction."""

    def f(self, u):
        return xlogx(u)

    def f_prime(self, u):
        return torch.log(u) + 1

    def weight(self, r):
        return r

    def pointwise(self, lp, lq):
        return lp.exp() * (lp - lq)

    @staticmethod
    def value_and_grad(target_logits, model_logits):
        """Closed form used by the chunked path (no autograd graph): per-row KL(P||Q) and its
        gradient w.r.t. the model logits, softmax(model) - softmax(target). (n, V) logits, float32 math."""
        lp = torch.log_softmax(target_logits.to(compute_dtype(target_logits)), dim=-1)
        lq = torch.log_softmax(model_logits.to(compute_dtype(model_logits)), dim=-1)
        p = lp.exp()
        values = torch.where(p > 0, p * (lp - lq), torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)
        return values, lq.exp() - p


@register("reverse_kl")
class ReverseKL(FDivergence):
    """KL(Q||P) = sum Q log(Q/P): mode-seeking (MiniLLM, DMD)."""

    def f(self, u):
        return -torch.log(u)

    def f_prime(self, u):
        return -1 / u

    def weight(self, r):
        return torch.ones_like(r)

    def pointwise(self, lp, lq):
        return lq.exp() * (lq - lp)

    @staticmethod
    def value_and_grad(target_logits, model_logits):
        """Closed form used by the chunked path: per-row KL(Q||P) and its gradient w.r.t. the
        model logits, q * (log q - log p - KL). (n, V) logits, float32 math."""
        lp = torch.log_softmax(target_logits.to(compute_dtype(target_logits)), dim=-1)
        lq = torch.log_softmax(model_logits.to(compute_dtype(model_logits)), dim=-1)
        q = lq.exp()
        zero = torch.zeros((), dtype=q.dtype, device=q.device)
        terms = torch.where(q > 0, q * (lq - lp), zero)
        values = terms.sum(-1)
        grad = torch.where(q > 0, q * (lq - lp - values.unsqueeze(-1)), zero)
        return values, grad


@register("jeffreys")
class Jeffreys(FDivergence):
    """KL(P||Q) + KL(Q||P), symmetric."""

    symmetric = True

    def f(self, u):
        return (u - 1) * torch.log(u)

    def f_prime(self, u):
        return torch.log(u) + 1 - 1 / u

    def weight(self, r):
        return r + 1

    def pointwise(self, lp, lq):
        return (lp.exp() - lq.exp()) * (lp - lq)


@register("js")
class JensenShannon(FDivergence):
    """JS(P, Q) = KL(P||M)/2 + KL(Q||M)/2, M = (P+Q)/2, natural log (max log 2), symmetric."""

    symmetric = True

    def f(self, u):
        return 0.5 * (xlogx(u) - (u + 1) * torch.log((u + 1) / 2))

    def f_prime(self, u):
        return 0.5 * torch.log(2 * u / (u + 1))

    def weight(self, r):
        return r / (2 * (r + 1))

    def pointwise(self, lp, lq):
        lm = torch.logaddexp(lp, lq) - LOG2
        return 0.5 * (lp.exp() * (lp - lm) + lq.exp() * (lq - lm))


@register("total_variation")
class TotalVariation(FDivergence):
    """TV(P, Q) = sum |P - Q| / 2 in [0, 1], symmetric; h(r) = 0 (f is piecewise linear)."""

    symmetric = True

    def f(self, u):
        return 0.5 * torch.abs(u - 1)

    def f_prime(self, u):
        return 0.5 * torch.sign(u - 1)

    def weight(self, r):
        return torch.zeros_like(r)

    def pointwise(self, lp, lq):
        return 0.5 * torch.abs(lp.exp() - lq.exp())


@register("pearson_chi2")
class PearsonChi2(FDivergence):
    """Pearson chi^2(P||Q) = sum (P - Q)^2 / Q."""

    def f(self, u):
        return (u - 1) ** 2

    def f_prime(self, u):
        return 2 * (u - 1)

    def weight(self, r):
        return 2 * r**2

    def pointwise(self, lp, lq):
        return _chi2_summand(lp, lq)


@register("neyman_chi2")
class NeymanChi2(FDivergence):
    """Neyman chi^2(P||Q) = sum (P - Q)^2 / P (= Pearson chi^2(Q||P))."""

    def f(self, u):
        return (u - 1) ** 2 / u

    def f_prime(self, u):
        return 1 - 1 / u**2

    def weight(self, r):
        return 2 / r

    def pointwise(self, lp, lq):
        return _chi2_summand(lq, lp)


def _chi2_summand(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """(a - b)^2 / b from log a, log b: b expm1(log a - log b)^2 for moderate ratios (exact at a = b),
    a^2/b - 2a + b for a > e b (no 0 * inf when b underflows)."""
    lr = la - lb
    small = lr <= 1
    near = lb.exp() * torch.expm1(where_safe(small, lr, 0.0)) ** 2
    la_f, lb_f = where_safe(~small, la, 0.0), where_safe(~small, lb, 0.0)
    far = torch.exp(2 * la_f - lb_f) - 2 * la_f.exp() + lb_f.exp()
    return torch.where(small, near, far)


@register("squared_hellinger")
class SquaredHellinger(FDivergence):
    """H^2(P, Q) = sum (sqrt P - sqrt Q)^2 in [0, 2] (f = (sqrt u - 1)^2, no 1/2 factor), symmetric."""

    symmetric = True

    def f(self, u):
        return (torch.sqrt(u) - 1) ** 2

    def f_prime(self, u):
        return 1 - 1 / torch.sqrt(u)

    def weight(self, r):
        return 0.5 * torch.sqrt(r)

    def pointwise(self, lp, lq):
        return (torch.exp(0.5 * lp) - torch.exp(0.5 * lq)) ** 2


@register("alpha")
class AmariAlpha(FDivergence):
    """Amari alpha-divergence, f(u) = (u^a - 1 - a (u - 1)) / (a (a - 1)), h(r) = r^a.

    a -> 1 is forward_kl (P||Q), a -> 0 is reverse_kl; both ends are evaluated by their closed
    forms; a = 0.5 gives 2 * squared_hellinger, a = 2 gives pearson_chi2 / 2, a = -1 neyman_chi2 / 2.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,  # Amari alpha, any real; 1 -> forward_kl, 0 -> reverse_kl
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.alpha = check_range(self.name, "alpha", alpha)

    def f(self, u):
        a = self.alpha
        if a == 1.0:
            return xlogx(u) - u + 1
        if a == 0.0:
            return -torch.log(u) + u - 1
        return (u**a - 1 - a * (u - 1)) / (a * (a - 1))

    def f_prime(self, u):
        a = self.alpha
        if a == 1.0:
            return torch.log(u)
        return (u ** (a - 1) - 1) / (a - 1)

    def weight(self, r):
        return r**self.alpha

    def pointwise(self, lp, lq):
        a = self.alpha
        p, q = lp.exp(), lq.exp()
        if a == 1.0:
            return p * (lp - lq) - p + q
        if a == 0.0:
            return q * (lq - lp) - q + p
        lr = lp - lq
        small = lr.abs() <= 1
        lr_s = where_safe(small, lr, 0.0)
        near = q * (torch.expm1(a * lr_s) - a * torch.expm1(lr_s))  # exact 0 at P = Q
        lp_f, lq_f = where_safe(~small, lp, 0.0), where_safe(~small, lq, 0.0)
        far = torch.exp(a * lp_f + (1 - a) * lq_f) - a * lp_f.exp() - (1 - a) * lq_f.exp()
        return torch.where(small, near, far) / (a * (a - 1))
