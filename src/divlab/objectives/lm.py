"""Language modelling by maximum likelihood: the next-token NLL over the actions of a batch.

    loss = - (1/N) sum_t log p(x_{t+1} | x_{<=t})   over the target positions (the actions)

Batches use the layout of `divlab.data.arithmetic` / `divlab.data.text_lm` / `divlab.data.instruct`:
tokens (B, L), prompt_len (B,), length (B,); the actions are tokens[prompt_len:length], so the target
positions are t = prompt_len - 1 .. length - 2. Shared by every LM task (lm, seqmatch, mix_lm, lm_distill)
and the mixers, which receive `lm_loss` from their task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def lm_loss(
    logits: Tensor, targets: Tensor, *, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> Tensor:
    """Next-token cross-entropy of logits (..., V) against targets (...); `ignore_index` targets count 0.

    reduction "mean" (over the counted targets), "sum" or "none" (per token, same shape as targets).
    """
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(targets.shape)
    if reduction == "none":
        return flat
    if reduction == "sum":
        return flat.sum()
    return flat.sum() / (targets != ignore_index).sum().clamp(min=1)


def action_mask(shape: tuple[int, int], *, prompt_len: Tensor, length: Tensor) -> Tensor:
    """(B, L-1) bool: transition t -> t+1 is an action (prompt_len - 1 <= t < length - 1)."""
    t = torch.arange(shape[1] - 1, device=length.device)[None]
    return (t >= prompt_len[:, None] - 1) & (t < length[:, None] - 1)


def lm_targets(tokens: Tensor, mask: Tensor, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, L-1) next tokens where `mask` holds, `ignore_index` elsewhere."""
    return tokens[:, 1:].masked_fill(~mask, ignore_index)
