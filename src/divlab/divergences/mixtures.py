"""f-divergences measured against a mixture of P and Q (fdivergences.py has the others).

Same convention and pieces as fdivergences.py: D_f(P||Q) = sum_x Q(x) f(P(x)/Q(x)), P = target/teacher,
Q = model/student, r = P/Q; lp, lq are log P, log Q. M is a mixture of P and Q, named in each member.
"""

from __future__ import annotations

import math

import torch

from divlab.errors import ConfigError

from .base import LOG2, FDivergence, check_range, xlogx
from .registry import register


@register("generalized_js")
class GeneralizedJS(FDivergence):
    """Generalized JSD of GKD (Agarwal et al. 2024, eq. 1), M = beta P + (1-beta) Q:

        JSD(beta)(P||Q) = beta KL(P||M) + (1-beta) KL(Q||M)

    beta weights the target P (the teacher) in M. This is GKD's and TRL's convention: TRL's
    `generalized_jsd_loss(student_logits, teacher_logits, beta=...)` builds its mixture as
    beta * teacher + (1 - beta) * student and weights KL(teacher||M) by beta, so divlab's beta is
    TRL's beta and GKD's beta. The default is their unnormalised value, beta in the open interval
    (0, 1): it tends to 0 at both ends (TRL jumps to forward/reverse KL exactly at beta = 0 / 1;
    divlab asks for forward_kl / reverse_kl, or normalized=True, instead).

    normalized=True divides by beta (1-beta): the generator then has h(r) = r / (beta r + 1 - beta),
    is continuous in beta, equals forward_kl at beta = 0 and reverse_kl at beta = 1 (both ends
    included), and 4 * js at beta = 0.5.
    """

    def __init__(
        self,
        *,
        beta: float = 0.5,  # weight of P (teacher) in M, as in GKD and TRL; (0, 1), or [0, 1] normalized
        normalized: bool = False,  # True: divide by beta (1 - beta) (0 -> forward_kl, 1 -> reverse_kl)
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
    ):
        super().__init__(reduction=reduction)
        self.normalized = bool(normalized)
        if self.normalized:
            self.beta = check_range(self.name, "beta", beta, 0, 1)
        elif float(beta) in (0.0, 1.0):
            raise ConfigError(
                f"Divergence {self.name!r}: beta must be in (0, 1) for the unnormalised JSD(beta), got {beta!r}; "
                f"use divergence=forward_kl (beta 0) or reverse_kl (beta 1), or set normalized=true."
            )
        else:
            self.beta = check_range(self.name, "beta", beta, 0, 1, lo_open=True, hi_open=True)
        self._scale = (
            1.0 if not self.normalized or self.beta in (0.0, 1.0) else 1 / (self.beta * (1 - self.beta))
        )

    def f(self, u):
        b = self.beta
        if b == 0.0:
            return xlogx(u) - u + 1
        if b == 1.0:
            return u - 1 - torch.log(u)
        s = b * u + 1 - b
        return self._scale * (b * xlogx(u) - xlogx(s))

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


@register("skew_kl")
class SkewKL(FDivergence):
    """DistiLLM's alpha-skew KL (Ko et al. 2024, Eq. 3): KL(P || a P + (1-a) Q); a = 0 is forward_kl."""

    def __init__(
        self,
        *,
        alpha: float = 0.1,  # skew a in [0, 1): share of P in the second argument
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
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
        alpha: float = 0.1,  # skew a in [0, 1): share of Q in the second argument
        reduction: str = "none",  # "none" | "mean" over valid positions | "sum"
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
