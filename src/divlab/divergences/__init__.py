"""divlab.divergences: every divergence of the four paper families, defined once.

    from divlab.divergences import get_divergence, available
    d = get_divergence("forward_kl")                    # parameters as keywords: get_divergence("alpha", alpha=0.3)
    d(target_logits, model_logits, mask=None, dim=-1)   # per-position D(P||Q), P = target, Q = model
    d.f(u); d.f_prime(u); d.weight(r)                   # f-divergences: generator, f', h(r) = r^2 f''(r)

Convention: P = softmax(target) is the target (data, teacher), Q = softmax(model) the model
(student), r = P/Q; names say the direction. Each member has a `kind` saying its call shape:

- "categorical": d(target_logits, model_logits, mask=None, dim=-1, *, labels=None, reduction=None)
  -> per-position values (dim removed), masked positions exactly 0; members with
  `needs_labels` (dkd, pld, ofa) need labels=, where labels < 0 (e.g. -100) mark ignored positions.
- "batch":       sinkd, same call, one 0-dim value for the whole batch (rows = positions).
- "samples":     d(target_samples, model_samples) with (N, D) / (M, D) (or (B, N, D) / (B, M, D)).

Categorical and batch members say whether they apply a temperature of their own with the class
attribute `owns_temperature`: True (hinton_kd, dkd, ofa, pld, sinkd) means "call me with the raw logits,
I scale them as my paper does (and add T^2 where it does)"; False (every f-divergence, alpha_beta) means
a KD task divides both logits by its T first and multiplies by T^2 if it is asked to.

Big vocabularies: `chunked_divergence` and `fused_linear_divergence` (see chunked.py).
docs/divergences.md has the table of members, formulas and conventions.
"""

from . import alpha_beta, dkd, fdivergences, hinton_kd, mixtures, ofa, pld, samples, sinkd, sinkhorn  # noqa: F401
from .base import FDivergence
from .chunked import ChunkedDivergence, FusedLinearDivergence, chunked_divergence, fused_linear_divergence
from .registry import available, get_divergence, register
from .sinkhorn import sinkhorn_cost

__all__ = [
    "ChunkedDivergence",
    "FDivergence",
    "FusedLinearDivergence",
    "available",
    "chunked_divergence",
    "fused_linear_divergence",
    "get_divergence",
    "register",
    "sinkhorn_cost",
]
