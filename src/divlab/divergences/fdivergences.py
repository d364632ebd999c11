"""Every f-divergence, defined once by its generator f (DESIGN.md, "the one idea").

D_f(P||Q) = sum_x Q(x) f(P(x)/Q(x)), P = target/teacher, Q = model/student, r = P/Q.
Each member gives f, f', h(r) = r**2 f''(r) and the log-space summand Q f(P/Q);
lp, lq below are log P, log Q, p, q their exponentials, lr = lp - lq = log r.
"""

from __future__ import annotations

import math

import torch

from .base import LOG2, FDivergence, check_range, compute_dtype, where_safe
from .registry import register


def _xlogx(u: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(u, u)


@register("forward_kl")
class ForwardKL(FDivergence):
    """KL(P||Q) = sum P log(P/Q): mass-covering, the classic KD / MLE direction."""

    def f(self, u):
        return _xlogx(u)

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
        return 0.5 * (_xlogx(u) - (u + 1) * torch.log((u + 1) / 2))

    def f_prime(self, u):
        return 0.5 * torch.log(2 * u / (u + 1))

    def weight(self, r):
        return r / (2 * (r + 1))

    def pointwise(self, lp, lq):
        lm = torch.logaddexp(lp, lq) - LOG2
        return 0.5 * (lp.exp() * (lp - lm) + lq.exp() * (lq - lm))


@register("generalized_js")
class GeneralizedJS(FDivergence):
    """Generalized JSD of GKD (Agarwal et al. 2024), M = beta P + (1-beta) Q:
    JSD_beta = beta KL(P||M) + (1-beta) KL(Q||M).

    With normalized=True (default) the value is JSD_beta / (beta (1-beta)), whose generator has
    h(r) = r / (beta r + 1 - beta): continuous in beta, equal to forward_kl at beta = 0 and to
    reverse_kl at beta = 1 (both ends included), and 4 * js at beta = 0.5. With
    normalized=False it is GKD's/TRL's unscaled JSD_beta (beta in the open interval (0, 1)).
    """

    def __init__(
        self,
        *,
        beta: float = 0.5,          # mixture weight of P in M; 0 -> forward_kl, 1 -> reverse_kl (normalized)
        normalized: bool = True,    # divide by beta (1 - beta), making both endpoints the KLs
        reduction: str = "none",    # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.normalized = bool(normalized)
        if self.normalized:
            self.beta = check_range(self.name, "beta", beta, 0, 1)
        else:
            self.beta = check_range(self.name, "beta", beta, 0, 1, lo_open=True, hi_open=True)
        self._scale = 1.0 if not self.normalized or self.beta in (0.0, 1.0) else 1 / (self.beta * (1 - self.beta))

    def f(self, u):
        b = self.beta
        if b == 0.0:
            return _xlogx(u) - u + 1
        if b == 1.0:
            return u - 1 - torch.log(u)
        s = b * u + 1 - b
        return self._scale * (b * _xlogx(u) - _xlogx(s))

    def f_prime(self, u):
        b = self.beta
        if b == 0.0:
            return torch.log(u)
        if b == 1.0:
            return 1 - 1 / u
        return self._scale * b * torch.log(u / (b * u + 1 - b))

    def weight(self, r):
        b = self.beta
        h = r / (b * r + 1 - b)
        return h if self.normalized else b * (1 - b) * h

    def pointwise(self, lp, lq):
        b = self.beta
        p, q = lp.exp(), lq.exp()
        if b == 0.0:
            return p * (lp - lq) - p + q
        if b == 1.0:
            return q * (lq - lp) - q + p
        lm = torch.logaddexp(lp + math.log(b), lq + math.log1p(-b))
        return self._scale * (b * p * (lp - lm) + (1 - b) * q * (lq - lm))


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


@register("softened_reverse_kl")
class SoftenedReverseKL(FDivergence):
    """f-distill's softened reverse KL (Xu et al. 2025, Table 1): f(u) = (u+1) log((u+1)/(2u)),
    h(r) = 1/(r+1); equals 2 KL(M||P) with M = (P+Q)/2."""

    def f(self, u):
        return (u + 1) * torch.log((u + 1) / (2 * u))

    def f_prime(self, u):
        return torch.log((u + 1) / (2 * u)) - 1 / u

    def weight(self, r):
        return 1 / (r + 1)

    def pointwise(self, lp, lq):
        lm = torch.logaddexp(lp, lq) - LOG2
        return 2 * lm.exp() * (lm - lp)


@register("alpha")
class AmariAlpha(FDivergence):
    """Amari alpha-divergence, f(u) = (u^a - 1 - a (u - 1)) / (a (a - 1)), h(r) = r^a.

    a -> 1 is forward_kl (P||Q), a -> 0 is reverse_kl; both ends are evaluated by their closed
    forms; a = 0.5 gives 2 * squared_hellinger, a = 2 gives pearson_chi2 / 2, a = -1 neyman_chi2 / 2.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,         # Amari alpha, any real; 1 -> forward_kl, 0 -> reverse_kl
        reduction: str = "none",    # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.alpha = check_range(self.name, "alpha", alpha)

    def f(self, u):
        a = self.alpha
        if a == 1.0:
            return _xlogx(u) - u + 1
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


@register("skew_kl")
class SkewKL(FDivergence):
    """DistiLLM's alpha-skew KL (Ko et al. 2024, Eq. 3): KL(P || a P + (1-a) Q); a = 0 is forward_kl."""

    def __init__(
        self,
        *,
        alpha: float = 0.1,         # skew a in [0, 1): share of P in the second argument
        reduction: str = "none",    # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.alpha = check_range(self.name, "alpha", alpha, 0, 1, hi_open=True)

    def f(self, u):
        a = self.alpha
        return u * torch.log(u / (a * u + 1 - a))

    def f_prime(self, u):
        a = self.alpha
        s = a * u + 1 - a
        return torch.log(u / s) + (1 - a) / s

    def weight(self, r):
        a = self.alpha
        return r * (1 - a) ** 2 / (a * r + 1 - a) ** 2

    def pointwise(self, lp, lq):
        a = self.alpha
        lmix = lq if a == 0.0 else torch.logaddexp(lp + math.log(a), lq + math.log1p(-a))
        return lp.exp() * (lp - lmix)


@register("skew_reverse_kl")
class SkewReverseKL(FDivergence):
    """DistiLLM's alpha-skew reverse KL (Ko et al. 2024, Eq. 4): KL(Q || (1-a) P + a Q); a = 0 is reverse_kl."""

    def __init__(
        self,
        *,
        alpha: float = 0.1,         # skew a in [0, 1): share of Q in the second argument
        reduction: str = "none",    # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.alpha = check_range(self.name, "alpha", alpha, 0, 1, hi_open=True)

    def f(self, u):
        a = self.alpha
        return -torch.log((1 - a) * u + a)

    def f_prime(self, u):
        a = self.alpha
        return -(1 - a) / ((1 - a) * u + a)

    def weight(self, r):
        a = self.alpha
        return (r * (1 - a)) ** 2 / ((1 - a) * r + a) ** 2

    def pointwise(self, lp, lq):
        a = self.alpha
        lmix = lp if a == 0.0 else torch.logaddexp(lp + math.log1p(-a), lq + math.log(a))
        return lq.exp() * (lq - lmix)


@register("chi2_mixture")
class Chi2Mixture(FDivergence):
    """SequenceMatch's chi^2-mixture divergence (Cundy & Ermon 2024): Pearson chi^2(P || M), M = (P+Q)/2,
    = sum (P - Q)^2 / (2 (P + Q)) in [0, 1]; bounded and symmetric. f(u) = (u-1)^2 / (2 (u+1)), h(r) = 4 r^2/(r+1)^3."""

    symmetric = True

    def f(self, u):
        return (u - 1) ** 2 / (2 * (u + 1))

    def f_prime(self, u):
        return 0.5 - 2 / (u + 1) ** 2

    def weight(self, r):
        return 4 * r**2 / (r + 1) ** 3

    def pointwise(self, lp, lq):
        # (p - q)^2 / (2 (p + q)) = (p + q)/2 * tanh(log(p/q) / 2)^2
        return 0.5 * (lp.exp() + lq.exp()) * torch.tanh(0.5 * (lp - lq)) ** 2
