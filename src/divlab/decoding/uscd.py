"""USCD: uncertainty-aware selective contrastive decoding, one decoding step as pure functions on logits.

Wang, Ding, Shen, Luo, He, Yu, Tao, "USCD: Improving Code Generation of LLMs by Uncertainty-Aware Selective
Contrastive Decoding" (2024, arXiv:2409.05923). Two prompts are decoded side by side with the same generated
tokens: the *standard* few-shot prompt and the *lame* prompt, which is the standard prompt with its
input-output examples removed and whose predictions carry the "output noise" the method removes. Writing
s_t, l_t for the next-token logits after the standard and the lame prompt, P_t = softmax(s_t) and
Q_t = softmax(l_t):

    greedy              y_t = argmax_v log P_t(v)                                          (G)
    contrastive         c_t = log P_t - w log Q_t,      y_t = argmax_{v in V_head} c_t(v)   (C)
    uncertainty         u_t = D(P_t || Q_t)         (divlab convention: P = target = standard)   (U)
    USCD                y_t = (C) if u_t >= tau else (G)                                   (S)

(G), (C), (U), (S) are this file's labels (the paper's own equations could not be read, see below).

- (C) is contrastive decoding (Li et al. 2023, "Contrastive Decoding: Open-ended Text Generation as
  Optimization", ACL: the contrastive objective log p_EXP - log p_AMA) with a weight w on the lame
  ("amateur") term, as in O'Brien & Lewis 2023 ("Contrastive Decoding Improves Reasoning in Large Language
  Models"), whose (1 + b) s - b l has the same argmax as (C) with w = b / (1 + b). log_softmax subtracts
  one constant per row, so (C) on log-probabilities and on raw logits pick the same token; it is computed
  on float32 log-probabilities. V_head is Li et al.'s adaptive plausibility constraint:
  {v : P_t(v) >= alpha max_v' P_t(v')}; alpha = `plausibility`, 0 (the default) keeps every token.
- (U): the paper gates the contrast by the uncertainty of the standard prediction and relates that
  uncertainty to the output noise of the lame prompt with the Jensen-Shannon divergence (its abstract:
  JS ~ 0.25 in the preliminary study). divlab measures u_t as a divergence from the library between the two
  next-token distributions, P = standard (target) and Q = lame (model), JS by default; any categorical
  divergence of `divlab.divergences` can be named. Only the abstract of the paper could be read while this
  file was written: the exact uncertainty statistic, the default threshold and weight of the paper are
  not reproduced here, and `threshold` and `weight` have no defaults for that reason.
- (S): contrast where u_t >= tau. tau = inf never contrasts (USCD = greedy, G); tau = 0 always contrasts
  (USCD = contrastive, C), since a divergence is never negative (round-off below 0 counts as 0). w = 0 makes
  (C) equal (G).

Shapes: rows (B, V) of logits, or any (..., V); every function works on the last dimension.

Config keys: the `decode` group (conf/decode/{greedy,contrastive,uscd}.yaml, read by task=code_eval,
divlab/tasks/code_eval.py); each maps to the keyword of `divlab.decoding.generate` of the same name,
mode -> decode:

    decode:
      mode: greedy        # greedy | contrastive | uscd
      threshold: null     # uscd: contrast where D(standard || lame) >= threshold (inf: greedy, 0: contrastive)
      weight: null        # contrastive, uscd: c = log P_standard - weight * log P_lame, weight >= 0
      divergence: js      # uscd: the uncertainty divergence, a name of divlab.divergences (P = standard)
      plausibility: 0.0   # contrastive, uscd: Li et al.'s alpha in [0, 1]; 0 = no plausibility constraint
      max_new_tokens: 24  # tokens decoded per prompt
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from divlab.divergences import get_divergence
from divlab.errors import ConfigError

__all__ = [
    "MODES",
    "check_weight",
    "check_threshold",
    "contrastive",
    "contrastive_logits",
    "greedy",
    "resolve_divergence",
    "uncertainty",
    "uscd_step",
]

MODES = ("greedy", "contrastive", "uscd")  # decode.mode options


# ----------------------------------------------------------------------------- checks


def check_weight(weight, *, key: str = "decode.weight") -> float:
    """The contrast weight w of (C): a finite number >= 0."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key} must be a number >= 0 (the weight of the lame logits), got {weight!r}."
        ) from None
    if not (math.isfinite(w) and w >= 0):
        raise ConfigError(
            f"{key} must be a finite number >= 0 (the weight of the lame logits), got {weight!r}."
        )
    return w


def check_threshold(threshold, *, key: str = "decode.threshold") -> float:
    """The uncertainty threshold tau of (S): a number >= 0, inf allowed (never contrast)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number >= 0 or inf, got {threshold!r}.") from None
    if math.isnan(t) or t < 0:
        raise ConfigError(f"{key} must be a number >= 0 or inf (0: always contrast), got {threshold!r}.")
    return t


def check_plausibility(plausibility, *, key: str = "decode.plausibility") -> float:
    try:
        a = float(plausibility)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number in [0, 1], got {plausibility!r}.") from None
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"{key} must be in [0, 1] (0: no plausibility constraint), got {plausibility!r}.")
    return a


def resolve_divergence(divergence: str | nn.Module, *, key: str = "decode.divergence") -> nn.Module:
    """A library divergence by name (or an instance) with the categorical call shape and no labels."""
    d = get_divergence(divergence) if isinstance(divergence, str) else divergence
    if getattr(d, "kind", None) != "categorical" or getattr(d, "needs_labels", False):
        name = getattr(d, "name", type(d).__name__)
        raise ConfigError(
            f"{key}={name!r} is not a categorical divergence without labels; "
            "use one such as js, forward_kl, reverse_kl or total_variation."
        )
    return d


# ----------------------------------------------------------------------------- the step


def greedy(standard: Tensor) -> Tensor:
    """(G): argmax of the standard logits, long (...,)."""
    return standard.argmax(dim=-1)


def contrastive_logits(standard: Tensor, lame: Tensor, *, weight: float, plausibility: float = 0.0) -> Tensor:
    """(C): log P - w log Q in float32, with -inf outside Li et al.'s V_head when plausibility > 0."""
    if standard.shape != lame.shape:
        raise ConfigError(
            f"standard and lame logits must have the same shape (same vocabulary), "
            f"got {tuple(standard.shape)} and {tuple(lame.shape)}."
        )
    w, alpha = check_weight(weight), check_plausibility(plausibility)
    lp = torch.log_softmax(standard.float(), dim=-1)
    out = lp - w * torch.log_softmax(lame.float(), dim=-1) if w else lp
    if alpha > 0:  # log P(v) >= log alpha + max log P
        head = lp >= lp.max(dim=-1, keepdim=True).values + math.log(alpha)
        out = out.masked_fill(~head, float("-inf"))
    return out


def contrastive(standard: Tensor, lame: Tensor, *, weight: float, plausibility: float = 0.0) -> Tensor:
    """(C): the token of the contrastive logits, long (...,)."""
    return contrastive_logits(standard, lame, weight=weight, plausibility=plausibility).argmax(dim=-1)


def uncertainty(standard: Tensor, lame: Tensor, *, divergence: str | nn.Module = "js") -> Tensor:
    """(U): D(P || Q) per row, float32 (...,), P = softmax(standard) the target, Q = softmax(lame)."""
    d = resolve_divergence(divergence)
    return d(standard.float(), lame.float(), reduction="none")


def uscd_step(
    standard_logits: Tensor,
    lame_logits: Tensor,
    *,
    threshold: float,  # tau: contrast where the uncertainty is >= tau (inf: greedy, 0: contrastive)
    weight: float,  # w of the contrastive logits log P - w log Q
    divergence: str | nn.Module = "js",  # the uncertainty divergence (library name or instance)
    plausibility: float = 0.0,  # Li et al.'s alpha of V_head; 0 = every token
) -> tuple[Tensor, Tensor]:
    """(S): (token ids long (...,), applied bool (...,)): the contrastive token where applied, else greedy."""
    tau = check_threshold(threshold)
    u = uncertainty(standard_logits, lame_logits, divergence=divergence)
    applied = u.clamp(min=0) >= tau
    ids = torch.where(
        applied,
        contrastive(standard_logits, lame_logits, weight=weight, plausibility=plausibility),
        greedy(standard_logits),
    )
    return ids, applied
