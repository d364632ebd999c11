"""Shared pieces: input preparation (float32 log-probabilities, masks), reductions, checks,
and the one `FDivergence` base class that turns a generator f into D_f(P||Q).

Convention (docs/divergences.md): P = softmax(target_logits) is the target (data or teacher),
Q = softmax(model_logits) the model (student), r = P/Q, D_f(P||Q) = sum_x Q(x) f(P(x)/Q(x)).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from divlab.errors import ConfigError

REDUCTIONS = ("none", "mean", "sum")
LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------- checks


def check_reduction(name: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(
            f"Divergence {name!r}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}."
        )
    return reduction


def check_range(name: str, key: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False) -> float:
    """Raise ConfigError unless `value` is a finite number in the interval [lo, hi] (ends open as asked)."""
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    interval = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Divergence {name!r}: {key} must be a number in {interval}, got {value!r}."
        ) from None
    ok = math.isfinite(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
    ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        raise ConfigError(f"Divergence {name!r}: {key} must be in {interval}, got {value!r}.")
    return v


def check_int(name: str, key: str, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"Divergence {name!r}: {key} must be an integer >= {lo}, got {value!r}.")
    return value


# ----------------------------------------------------------------------------- tensors


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float16/bfloat16 (and integer) inputs are computed in float32; float32/float64 are kept."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def check_pair(name: str, target: torch.Tensor, model: torch.Tensor) -> None:
    if target.shape != model.shape:
        raise ConfigError(
            f"Divergence {name!r}: target and model logits must have the same shape (same vocabulary), "
            f"got {tuple(target.shape)} and {tuple(model.shape)}."
        )


def position_mask(name: str, mask, logits: torch.Tensor, dim: int) -> torch.Tensor | None:
    """Boolean mask over positions (the logits' shape without `dim`), or None."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask, device=logits.device)
    expected = logits.shape[: dim % logits.ndim] + logits.shape[dim % logits.ndim + 1 :]
    if mask.shape != expected:
        raise ConfigError(
            f"Divergence {name!r}: mask must have the logits' shape without dim {dim}, "
            f"{tuple(expected)}, got {tuple(mask.shape)}."
        )
    return mask.bool()


def sanitize(logits: torch.Tensor, valid: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Upcast to the compute dtype and zero the masked positions, so they cannot produce NaN anywhere."""
    logits = logits.to(compute_dtype(logits))
    if valid is not None:
        logits = torch.where(
            valid.unsqueeze(dim), logits, torch.zeros((), dtype=logits.dtype, device=logits.device)
        )
    return logits


def log_probs(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """log_softmax with -inf (masked classes) replaced by the most negative finite number.

    Two masked classes then give log-ratio 0 and contribute exactly 0 to every f-divergence,
    with finite gradients (clamp passes no gradient to the masked entries).
    """
    lp = torch.log_softmax(logits, dim=dim)
    return lp.clamp(min=torch.finfo(lp.dtype).min)


def reduce(values: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Zero the masked positions exactly, then reduce: "none", "mean" over valid positions, or "sum"."""
    if valid is not None:
        values = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    count = values.numel() if valid is None else valid.sum()
    return values.sum() / torch.clamp(torch.as_tensor(count, device=values.device), min=1).to(values.dtype)


def xlogx(u: torch.Tensor) -> torch.Tensor:
    """u log u with 0 log 0 = 0."""
    return torch.special.xlogy(u, u)


def where_safe(cond: torch.Tensor, x: torch.Tensor, fill: float) -> torch.Tensor:
    """x where cond else `fill`: feed the result to a branch that must not see the other values."""
    return torch.where(cond, x, torch.full((), fill, dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------------------- f-divergences


class FDivergence(nn.Module):
    """D_f(P||Q) = sum_x Q(x) f(P(x)/Q(x)) between categorical distributions given as logits.

    A member defines its generator `f` (convex, f(1) = 0), `f_prime`, `weight(r) = r**2 f''(r)`
    and `pointwise(lp, lq)`, the log-space form of the summand Q f(P/Q) (the default evaluates f
    directly; members override it for stability). Everything else (float32 upcast, masks,
    -inf classes, reductions) is done here, once.
    """

    name = "f"
    kind = "categorical"  # call shape: see divlab.divergences.__init__
    needs_labels = False  # labels= is accepted and ignored
    owns_temperature = False  # a KD task divides both logits by its temperature T before calling it
    symmetric = False  # D(P||Q) == D(Q||P) for all P, Q

    def __init__(self, *, reduction: str = "none"):
        super().__init__()
        self.reduction = check_reduction(self.name, reduction)

    # generator pieces -------------------------------------------------------
    def f(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f_prime(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, r: torch.Tensor) -> torch.Tensor:
        """h(r) = r**2 f''(r), the density-ratio weight used by f-distill and Uni-Instruct."""
        raise NotImplementedError

    def pointwise(self, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """Summand Q f(P/Q) from log-probabilities (same shape, nothing reduced)."""
        return lq.exp() * self.f(torch.exp(lp - lq))

    # the divergence ---------------------------------------------------------
    def forward(self, target_logits, model_logits, mask=None, dim: int = -1, *, labels=None, reduction=None):
        """Per-position D_f(P||Q) with `dim` removed; `labels` is accepted for a uniform KD call and ignored."""
        check_pair(self.name, target_logits, model_logits)
        valid = position_mask(self.name, mask, target_logits, dim)
        lp = log_probs(sanitize(target_logits, valid, dim), dim)
        lq = log_probs(sanitize(model_logits, valid, dim), dim)
        values = self.pointwise(lp, lq).sum(dim)
        return reduce(values, valid, check_reduction(self.name, reduction or self.reduction))

    def extra_repr(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}
        return ", ".join(f"{k}={v!r}" for k, v in params.items())
