"""Entropic optimal transport, batched and stabilised (Cuturi 2013; Schmitzer 2019; Feydy et al. 2019).

`sinkhorn_solve` runs the classic Sinkhorn iterations (v = b / K^T u, then u = a / K v, with
K = exp(-C / epsilon) and POT's start u = 1/N) on a batch of problems at once. It keeps log-domain
potentials (alpha, beta) and a stabilised kernel K~ = exp(alpha_i + beta_j - C_ij / epsilon);
each iteration is a cheap scaling step on K~, and whenever a scaling leaves [e^-30, e^30] (or
under/overflows) the scalings are absorbed into the potentials and that iteration is redone in
the log domain (logsumexp); the first iteration is a log-domain one too when some row or
column of exp(-C / epsilon) is tiny. The iterates are therefore those of the log-domain algorithm,
and equal POT's `ot.sinkhorn` iterate for iterate, at the cost of matrix-vector products.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import check_int, check_range
from .registry import register

_ABSORB = 30.0  # |log u|, |log v| above this: fold the scalings into the potentials
_WELL_SCALED = 1e-8  # smallest row / column maximum of the starting kernel that needs no log-domain start
_SMALL = (
    4096  # N * M below this: products as multiply-and-sum (batched matmul of tiny matrices is slow on CPUs)
)


def _uniform_log(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.full(shape, -math.log(shape[-1]), dtype=like.dtype, device=like.device)


def sinkhorn_solve(
    cost: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, *, epsilon: float, iterations: int
):
    """Log-potentials (alpha (..., N), beta (..., M)) after `iterations` Sinkhorn iterations;
    the plan is exp(alpha_i + beta_j - C_ij / epsilon)."""
    log_k = -cost / epsilon
    a, b = log_a.exp(), log_b.exp()
    alpha = _uniform_log(cost.shape[:-1], cost)  # POT's start u = 1/N
    beta = torch.zeros_like(log_b)
    if iterations == 0:
        return alpha, beta

    def log_step(alpha, beta):
        beta = log_b - torch.logsumexp(log_k + alpha.unsqueeze(-1), dim=-2)
        alpha = log_a - torch.logsumexp(log_k + beta.unsqueeze(-2), dim=-1)
        return alpha, beta

    small = cost.shape[-1] * cost.shape[-2] < _SMALL

    def kernel(alpha, beta):
        # entries below sqrt(tiny) are flushed to 0: they change no sum, and denormal
        # floats would slow the matrix products ~10x on CPUs
        kern = torch.exp(log_k + alpha.unsqueeze(-1) + beta.unsqueeze(-2))
        kern = torch.where(kern < math.sqrt(torch.finfo(kern.dtype).tiny), torch.zeros_like(kern), kern)
        return kern, (None if small else kern.transpose(-1, -2).contiguous())

    def kt_u(u):  # K~^T u; as a row-vector product, the fast form on CPUs
        return (u.unsqueeze(-1) * kern).sum(-2) if small else (u.unsqueeze(-2) @ kern).squeeze(-2)

    def k_v(v):  # K~ v
        return (kern * v.unsqueeze(-2)).sum(-1) if small else (v.unsqueeze(-2) @ kern_t).squeeze(-2)

    def scalings_ok(u, v):
        bound = torch.maximum(torch.log(u).detach().abs().max(), torch.log(v).detach().abs().max())
        return bool(torch.isfinite(bound)) and float(bound) < _ABSORB

    kern, kern_t = kernel(alpha, beta)
    done = 0
    if float(torch.minimum(kern.detach().amax(-1).min(), kern.detach().amax(-2).min())) < _WELL_SCALED:
        # some row or column of exp(-C / eps) is tiny: run the first iteration in the log
        # domain, after which every row of K~ sums to a_i and the scaling steps are safe
        alpha, beta = log_step(alpha, beta)
        kern, kern_t = kernel(alpha, beta)
        done = 1
    ones_a, ones_b = torch.ones_like(a), torch.ones_like(b)
    u, v = ones_a, ones_b
    good, every = (u, v, done), 1  # last checked state; check interval (doubles up to 16 while all is well)
    while done < iterations:
        v = b / kt_u(u)
        u = a / k_v(v)
        done += 1
        if done - good[2] < every and done < iterations:
            continue
        if scalings_ok(u, v):
            good, every = (u, v, done), min(2 * every, 16)
            continue
        # roll back to the last good state, absorb its scalings, redo one iteration in the log domain
        u, v, done = good
        alpha, beta = log_step(alpha + torch.log(u), beta + torch.log(v))
        kern, kern_t = kernel(alpha, beta)
        u, v, done = ones_a, ones_b, done + 1
        good, every = (u, v, done), 1
    return alpha + torch.log(u), beta + torch.log(v)


def sinkhorn_cost(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    epsilon: float,
    iterations: int,
    regularized: bool = False,
):
    """Batched entropic OT on cost matrices (..., N, M) with marginals a (..., N), b (..., M)
    (uniform when None). Returns (value (...), plan (..., N, M)).

    value = <T, C> (what POT's `ot.sinkhorn2` returns) or, with regularized=True,
    <T, C> + epsilon KL(T || a b^T), the entropic OT value used for debiasing.
    """
    if cost.dtype not in (torch.float32, torch.float64):
        cost = cost.float()
    log_a = _uniform_log(cost.shape[:-1], cost) if a is None else torch.log(a.to(cost.dtype))
    log_b = (
        _uniform_log(cost.shape[:-2] + cost.shape[-1:], cost) if b is None else torch.log(b.to(cost.dtype))
    )
    alpha, beta = sinkhorn_solve(cost, log_a, log_b, epsilon=epsilon, iterations=iterations)
    log_plan = alpha.unsqueeze(-1) + beta.unsqueeze(-2) - cost / epsilon
    plan = log_plan.exp()
    value = (plan * cost).sum((-2, -1))
    if regularized:
        kl = plan * (log_plan - log_a.unsqueeze(-1) - log_b.unsqueeze(-2))
        value = value + epsilon * kl.sum((-2, -1))
    return value, plan


def as_samples(x: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1); (N, D) and (B, N, D) unchanged; half precision -> float32."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.unsqueeze(-1) if x.ndim == 1 else x


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """||x_i - y_j||^p for (..., N, D), (..., M, D), without NaN gradients at zero distance."""
    sq = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    if p == 2.0:
        return sq
    pos = sq > 0
    safe = torch.where(pos, sq, torch.ones_like(sq))
    return torch.where(pos, safe ** (p / 2), torch.zeros_like(sq))


@register("sinkhorn")
class Sinkhorn(nn.Module):
    """Entropic OT between two point clouds (N, D) / (M, D), or batches (B, N, D) / (B, M, D),
    with uniform weights and cost ||x - y||^p. Returns <T, C> (POT's sinkhorn2), or with
    debiased=True the Sinkhorn divergence S = OT(x, y) - (OT(x, x) + OT(y, y)) / 2 built from
    the regularized value OT = <T, C> + epsilon KL(T || a b^T) (Feydy et al. 2019), zero at x = y.
    """

    kind = "samples"  # call shape: see divlab.divergences.__init__

    def __init__(
        self,
        *,
        epsilon: float = 0.1,  # entropic regularisation, in cost units, > 0
        iterations: int = 100,  # Sinkhorn iterations (fixed; no early stop, so batches stay in step)
        p: float = 2.0,  # cost exponent: ||x - y||^p (2: squared Euclidean, like ot.dist)
        debiased: bool = False,  # Sinkhorn divergence (Feydy et al.) instead of the plain transport cost
    ):
        super().__init__()
        self.epsilon = check_range(self.name, "epsilon", epsilon, 0, None, lo_open=True)
        self.iterations = check_int(self.name, "iterations", iterations, lo=1)
        self.p = check_range(self.name, "p", p, 0, None, lo_open=True)
        self.debiased = bool(debiased)

    def _ot(self, x, y, regularized):
        value, _ = sinkhorn_cost(
            pairwise_cost(x, y, self.p),
            epsilon=self.epsilon,
            iterations=self.iterations,
            regularized=regularized,
        )
        return value

    def forward(self, target_samples, model_samples):
        x, y = as_samples(target_samples), as_samples(model_samples)
        if not self.debiased:
            return self._ot(x, y, False)
        return self._ot(x, y, True) - 0.5 * (self._ot(x, x, True) + self._ot(y, y, True))

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, iterations={self.iterations}, p={self.p}, debiased={self.debiased}"
