"""The backspace and KV-cache side of divlab's GPT (divlab.models.gpt): SequenceMatch's `<bs>` action.

- `KVCache`              per-layer key/value buffers with `append` and `pop(n)` (a backspace pops one).
- `backspace_attention`  the (mask, position_ids) that make one forward pass over a sequence
                         containing `<bs>` tokens compute every materialised state at once
                         (SequenceMatch, Cundy & Ermon, ICLR 2024: the backspace action).
- `backspace_state_index` for the paper's popped semantics: the position whose logits are the state
                         after each position (a `<bs>` returns to the shortened prefix, KV cache popped).

Shapes: B batch, T positions, H heads, S key positions, D head width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["KVCache", "backspace_attention", "backspace_state_index"]


# ----------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the positions already processed, one buffer pair per layer.

    Buffers are allocated on the first `append` of each layer (shape, dtype and device are
    taken from the keys) and hold at most `max_length` positions. All rows of the batch share
    one length; a sampler that needs ragged deletions per row can instead keep appending and
    pass an `attention_mask` that hides deleted positions (see `backspace_attention`).

    `GPT.forward(..., kv_cache=cache)` appends the new positions of every layer; `pop(n)`
    forgets the last n positions (the backspace action of SequenceMatch), after which the next
    forward overwrites them.
    """

    def __init__(
        self,
        *,
        n_layer: int,  # number of transformer blocks that will append to this cache
        max_length: int,  # most positions the cache can hold
    ) -> None:
        if n_layer < 1 or max_length < 1:
            raise ValueError(f"KVCache needs n_layer >= 1 and max_length >= 1, got {n_layer}, {max_length}.")
        self.n_layer = n_layer
        self.max_length = max_length
        self.keys: list[Tensor | None] = [None] * n_layer  # (B, H, max_length, D) per layer
        self.values: list[Tensor | None] = [None] * n_layer  # (B, H, max_length, D) per layer
        self._lengths = [0] * n_layer

    @property
    def length(self) -> int:
        """Number of positions stored by every layer."""
        return min(self._lengths)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, D) after the layer's current length; return all (B, H, S, D)."""
        start, t = self._lengths[layer], k.shape[2]
        if start + t > self.max_length:
            raise ValueError(
                f"KV cache is full: {start} + {t} positions exceed max_length={self.max_length}; "
                "build the cache with a larger max_length or pop/reset it."
            )
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        keys, values = self.keys[layer], self.values[layer]
        if keys.shape[0] != k.shape[0]:
            raise ValueError(f"KV cache holds batch size {keys.shape[0]}, got {k.shape[0]}; use a new cache.")
        keys[:, :, start : start + t] = k
        values[:, :, start : start + t] = v
        self._lengths[layer] = start + t
        return keys[:, :, : start + t], values[:, :, : start + t]

    def pop(self, n: int = 1) -> None:
        """Forget the last n positions of every layer."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot pop {n} positions from a KV cache of length {self.length}.")
        self._lengths = [length - n for length in self._lengths]

    def reset(self) -> None:
        """Forget every position (buffers are kept for reuse)."""
        self._lengths = [0] * self.n_layer

    def __len__(self) -> int:
        return self.length


# ----------------------------------------------------------------------------------------------
# Backspace: one masked pass computes every state


def _token_rows(tokens, prompt_len):
    """(device, rows (B, T) long on the CPU, whether tokens was one row, prompt length of each row)."""
    device = tokens.device if isinstance(tokens, Tensor) else torch.device("cpu")
    rows = torch.as_tensor(tokens).detach().cpu().long()
    unbatched = rows.dim() == 1
    if unbatched:
        rows = rows[None]
    if rows.dim() != 2:
        raise ValueError(f"tokens must have shape (T,) or (B, T), got {tuple(rows.shape)}.")
    return device, rows, unbatched, torch.as_tensor(prompt_len).long().cpu().expand(len(rows)).tolist()


def backspace_attention(
    tokens: Tensor | Sequence[int] | Sequence[Sequence[int]],
    *,
    bs_id: int,  # id of the backspace token <bs>
    prompt_len: int | Sequence[int] | Tensor = 0,  # leading tokens per row that <bs> never deletes
) -> tuple[Tensor, Tensor]:
    """Attention mask and position ids for a sequence whose `<bs>` tokens delete earlier tokens.

    SequenceMatch (Cundy & Ermon 2024) adds a backspace action: `<bs>` deletes the last token of
    the current state. Reading tokens left to right, the state after position i is the list of
    tokens still alive. A `<bs>` that would delete a prompt token (or act on an empty state) is
    a no-op. Each position i is given:

    - an ordinary token: it is the last token of its state s_i; it attends to the tokens of s_i
      and gets position id len(s_i) - 1. Its logits therefore equal the last-position logits
      of a plain causal forward over s_i.
    - a `<bs>` token: the deletion is applied first. It attends to the tokens of the state after
      the deletion, s_i, plus itself, and gets position id len(s_i), i.e. it sits where the next
      token will go. Its logits equal the last-position logits of a plain causal forward over
      s_i followed by `<bs>`: they predict the next token after the deletion, knowing that a
      backspace just happened. A `<bs>` is never alive, so no later position attends to it.

    Every position attends at least to itself, so no row of the mask is empty. Padding after
    the end is treated as ordinary tokens (mask it out of the loss).

    Args:
        tokens: (T,) or (B, T) token ids.
    Returns:
        mask: bool, (T, T) or (B, T, T); mask[..., i, j] is True when position i may attend to j.
        position_ids: long, (T,) or (B, T).
    Both live on the device of `tokens` when it is a tensor; pass them to `GPT.forward`.
    """
    device, rows, unbatched, prompts = _token_rows(tokens, prompt_len)
    b, t = rows.shape

    mask = np.zeros((b, t, t), dtype=bool)
    positions = np.zeros((b, t), dtype=np.int64)
    for r, (row, n_prompt) in enumerate(zip(rows.numpy(), prompts)):
        alive = np.zeros(t, dtype=bool)  # tokens of the current state
        stack: list[int] = []  # their indices, oldest first
        for i, token in enumerate(row):
            if token == bs_id and i >= n_prompt:
                if len(stack) > n_prompt:
                    alive[stack.pop()] = False
                mask[r, i] = alive
                mask[r, i, i] = True
                positions[r, i] = len(stack)
            else:
                stack.append(i)
                alive[i] = True
                mask[r, i] = alive
                positions[r, i] = len(stack) - 1
    mask_t, positions_t = torch.from_numpy(mask).to(device), torch.from_numpy(positions).to(device)
    return (mask_t[0], positions_t[0]) if unbatched else (mask_t, positions_t)


def backspace_state_index(
    tokens: Tensor | Sequence[int] | Sequence[Sequence[int]],
    *,
    bs_id: int,  # id of the backspace token <bs>
    prompt_len: int | Sequence[int] | Tensor = 0,  # leading tokens per row that <bs> never deletes
) -> Tensor:
    """Per position i, the position whose logits are those of the state after i, when `<bs>` returns to
    the shortened prefix as in SequenceMatch's reference sampler (the KV cache is popped, `<bs>` is not fed).

    With the mask of `backspace_attention`, an ordinary token's logits are those of its state, so its
    index is i. After a `<bs>` the state is the prefix whose last token is the previous alive position j:
    the index is j, and logits.gather(1, index) gives V(s') = V(prefix). When the deletion empties the
    state (prompt_len = 0), there is no prefix token: the `<bs>` keeps its own position (its logits
    condition on an empty state plus `<bs>`). Same rules as `backspace_attention` for no-op `<bs>`.

    Returns long (T,) or (B, T), on the device of `tokens` when it is a tensor.
    """
    device, rows, unbatched, prompts = _token_rows(tokens, prompt_len)
    b, t = rows.shape
    index = np.tile(np.arange(t, dtype=np.int64), (b, 1))
    for r, (row, n_prompt) in enumerate(zip(rows.numpy(), prompts)):
        stack: list[int] = []
        for i, token in enumerate(row):
            if token == bs_id and i >= n_prompt:
                if len(stack) > n_prompt:
                    stack.pop()
                if stack:
                    index[r, i] = stack[-1]
            else:
                stack.append(i)
    out = torch.from_numpy(index).to(device)
    return out[0] if unbatched else out
