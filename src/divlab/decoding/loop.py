"""Decode a divlab causal LM with greedy, contrastive or USCD steps (divlab.decoding.uscd), running the
standard and the lame prompt side by side: both streams receive the same chosen token at every step.

    out = generate(model, standard_ids, lame_ids=lame_ids, max_new_tokens=64,
                   decode="uscd", threshold=0.1, weight=0.5, divergence="js")
    out.ids               # (B, max_new_tokens) new tokens; after a row's eos: pad_id (HF) or eos_id (GPT)
    out.applied           # (B, max_new_tokens) bool: the contrastive logits chose this token
    out.live              # (B, max_new_tokens) bool: the row was still decoding (its eos step included)
    out.applied_fraction  # applied.sum() / live.sum(): the fraction of decoded steps where contrast was applied

Models: a divlab `GPT` (divlab.models.gpt) and a Hugging Face `HFCausalLM` (divlab.models.hf). Prompts are
left-padded batches (B, L) with an optional 0/1 mask (B, L) each; the standard and the lame batch may have
different lengths. With `cache=True` (default) each stream keeps a KV cache (GPT: `KVCache`; HF: the
cache `model.hf` returns), so a step feeds one token; `cache=False` recomputes the whole sequence at
every step (the reference the cached path is tested against). Positions follow the mask (the first real
token is position 0), as in HF's own generate. The model is put in eval mode and its mode restored.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from torch import Tensor, nn

from divlab.decoding.uscd import (
    MODES,
    check_threshold,
    check_weight,
    contrastive,
    greedy,
    resolve_divergence,
    uscd_step,
)
from divlab.errors import ConfigError
from divlab.models.gpt import GPT
from divlab.models.hf.lm import HFCausalLM

__all__ = ["Decoded", "generate"]


class Decoded(NamedTuple):
    ids: Tensor  # (B, N) long: the new tokens
    applied: Tensor  # (B, N) bool: contrast applied at this step
    live: Tensor  # (B, N) bool: the row was still decoding at this step
    applied_fraction: float  # applied.sum() / live.sum()


# ----------------------------------------------------------------------------- streams


def _prompt(ids: Tensor, mask: Tensor | None, key: str) -> tuple[Tensor, Tensor]:
    """(ids, bool mask) of a left-padded prompt batch; one sentence when the shapes or padding are wrong."""
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ConfigError(f"{key} must be token ids of shape (B, L) with L >= 1, got {tuple(ids.shape)}.")
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(ids.device).bool()
    if valid.shape != ids.shape:
        raise ConfigError(
            f"{key}'s mask must have the ids' shape {tuple(ids.shape)}, got {tuple(valid.shape)}."
        )
    if not bool(valid[:, -1].all()):
        raise ConfigError(f"{key} must be left-padded: the last column of its mask is 0 in some row.")
    return ids, valid


def _positions(valid: Tensor) -> Tensor:
    """Position ids of a left-padded mask: 0 at the first real token; padding gets 0 (never attended to)."""
    return (valid.long().cumsum(dim=1) - 1).clamp(min=0)


class _GPTStream:
    """Next-token logits (B, V) of a divlab GPT after a prompt and each appended token."""

    def __init__(
        self,
        model: GPT,
        *,
        cache: bool,  # keep a KVCache (True) or recompute the whole sequence each step
        extra: int,  # tokens that will be appended after the prompt (the cache's spare room)
    ) -> None:
        self.model, self.cache, self.extra = model, cache, extra

    def _mask(self, t: int) -> Tensor | None:
        """(B, t, S) mask of the t newest queries: causal, padding keys hidden, each query sees itself."""
        if not self.padded:
            return None
        s, device = self.valid.shape[1], self.valid.device
        query = torch.arange(s - t, s, device=device)[:, None]
        key = torch.arange(s, device=device)[None, :]
        return ((key <= query)[None] & self.valid[:, None, :]) | (key == query)[None]

    def prefill(self, ids: Tensor, valid: Tensor) -> Tensor:
        self.seq, self.valid = ids, valid
        self.padded = not bool(valid.all())
        self.kv = self.model.new_kv_cache(max_length=ids.shape[1] + self.extra) if self.cache else None
        return self._forward(ids, ids.shape[1])

    def step(self, token: Tensor) -> Tensor:
        self.seq = torch.cat([self.seq, token[:, None]], dim=1)
        self.valid = torch.cat([self.valid, self.valid.new_ones(len(token), 1)], dim=1)
        return self._forward(token[:, None], 1) if self.cache else self._forward(self.seq, self.seq.shape[1])

    def _forward(self, new: Tensor, t: int) -> Tensor:
        pos = _positions(self.valid)[:, -t:] if self.padded else None
        h = self.model.hidden_states(
            new if self.cache else self.seq, attention_mask=self._mask(t), position_ids=pos, kv_cache=self.kv
        )
        return self.model.lm_head(h[:, -1])  # only the last position's logits are formed


class _HFStream:
    """Next-token logits (B, V) of an HFCausalLM after a prompt and each appended token."""

    def __init__(
        self,
        model: HFCausalLM,
        *,
        cache: bool,  # keep the model's KV cache (True) or recompute the whole sequence each step
        extra: int,  # tokens that will be appended (unused: HF's cache grows by itself)
    ) -> None:
        self.model, self.cache = model, cache
        # transformers >= 5.2x names the KV cache `cache` (in and out); earlier versions `past_key_values`
        params = inspect.signature(model.hf.forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"
        # only the last position's logits (the prompt's L x V logits are never formed)
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.keep = {keep: 1} if keep else {}

    def prefill(self, ids: Tensor, valid: Tensor) -> Tensor:
        self.seq, self.mask, self.past = ids, valid.long(), None
        return self._forward(ids)

    def step(self, token: Tensor) -> Tensor:
        self.seq = torch.cat([self.seq, token[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(token), 1)], dim=1)
        return self._forward(token[:, None] if self.cache else self.seq)

    def _forward(self, new: Tensor) -> Tensor:
        pos = (self.mask.cumsum(dim=1) - 1).masked_fill(self.mask == 0, 1)[:, -new.shape[1] :]
        out = self.model.hf(
            input_ids=new,
            attention_mask=self.mask,
            position_ids=pos,
            use_cache=self.cache,
            **{self.cache_key: self.past},
            **self.keep,
        )
        self.past = getattr(out, self.cache_key) if self.cache else None
        return out.logits[:, -1]


# ----------------------------------------------------------------------------- the loop


@torch.no_grad()
def generate(
    model: nn.Module,
    standard_ids: Tensor,
    *,
    lame_ids: Tensor | None = None,  # (B, Ll) the lame prompts; needed unless decode is greedy
    standard_mask: Tensor | None = None,  # (B, Ls) 0/1, left padding; None = no padding
    lame_mask: Tensor | None = None,  # (B, Ll) 0/1, left padding; None = no padding
    max_new_tokens: int,  # tokens generated per row
    decode: str = "greedy",  # greedy | contrastive | uscd
    threshold: float | None = None,  # uscd: contrast where D(standard || lame) >= threshold
    weight: float | None = None,  # contrastive, uscd: log P_standard - weight * log P_lame
    divergence: str | nn.Module = "js",  # uscd: the uncertainty divergence (P = standard)
    plausibility: float = 0.0,  # contrastive, uscd: Li et al.'s V_head alpha; 0 = every token
    eos_id: int | None = None,  # None: the model's (HFCausalLM.eos_id; a GPT has none)
    cache: bool = True,  # KV caches (True) or recompute the whole sequence each step (False)
) -> Decoded:
    """Decode `max_new_tokens` tokens per row; see the module docstring for the result."""
    if decode not in MODES:
        raise ConfigError(f"decode.mode must be one of {', '.join(MODES)}, got {decode!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if decode != "greedy":
        if weight is None:
            raise ConfigError(f"decode.weight must be set (a number >= 0) for decode.mode={decode}.")
        weight = check_weight(weight)
        if lame_ids is None:
            raise ConfigError(f"decode.mode={decode} needs lame prompts (lame_ids); pass them or use greedy.")
    if decode == "uscd":
        if threshold is None:
            raise ConfigError("decode.threshold must be set (a number >= 0 or inf) for decode.mode=uscd.")
        threshold, divergence = check_threshold(threshold), resolve_divergence(divergence)

    if isinstance(model, HFCausalLM):
        stream_cls, eos = _HFStream, model.eos_id if eos_id is None else eos_id
        fill = model.pad_id
    elif isinstance(model, GPT):
        stream_cls, eos = _GPTStream, eos_id
        fill = eos_id
    else:
        raise ConfigError(
            f"divlab.decoding.generate decodes a divlab GPT or an HFCausalLM, got {type(model).__name__}."
        )
    standard_ids, standard_valid = _prompt(standard_ids, standard_mask, "standard_ids")
    streams = [stream_cls(model, cache=cache, extra=max_new_tokens)]
    prompts = [(standard_ids, standard_valid)]
    if decode != "greedy":
        lame_ids, lame_valid = _prompt(lame_ids.to(standard_ids.device), lame_mask, "lame_ids")
        if len(lame_ids) != len(standard_ids):
            raise ConfigError(
                f"lame_ids has {len(lame_ids)} rows and standard_ids {len(standard_ids)}; give one lame prompt "
                "per standard prompt."
            )
        streams.append(stream_cls(model, cache=cache, extra=max_new_tokens))
        prompts.append((lame_ids, lame_valid))

    b, n, device = len(standard_ids), max_new_tokens, standard_ids.device
    ids = torch.full((b, n), 0 if fill is None else fill, dtype=torch.long, device=device)
    applied = torch.zeros(b, n, dtype=torch.bool, device=device)
    live = torch.zeros(b, n, dtype=torch.bool, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        logits = [s.prefill(i, v) for s, (i, v) in zip(streams, prompts)]
        for step in range(n):
            if decode == "greedy":
                token, used = greedy(logits[0]), torch.zeros(b, dtype=torch.bool, device=device)
            elif decode == "contrastive":
                token = contrastive(logits[0], logits[1], weight=weight, plausibility=plausibility)
                used = torch.ones(b, dtype=torch.bool, device=device)
            else:
                token, used = uscd_step(
                    logits[0],
                    logits[1],
                    threshold=threshold,
                    weight=weight,
                    divergence=divergence,
                    plausibility=plausibility,
                )
            live[:, step] = ~done
            if fill is not None:
                token = token.masked_fill(done, fill)
            ids[:, step], applied[:, step] = token, used & ~done
            if eos is not None:
                done |= token == eos
            if step == n - 1 or bool(done.all()):
                break
            logits = [s.step(token) for s in streams]
    finally:
        model.train(was_training)
    return Decoded(ids, applied, live, float(applied.sum()) / float(live.sum()))
