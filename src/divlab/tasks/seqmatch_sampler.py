"""Sampling with a backspace action (SequenceMatch, Cundy & Ermon 2024): `<bs>` deletes the last token.

`sample_with_backspace` continues a batch of inputs (a protected prompt, optionally followed by a
forced, deletable prefix) one action per row per step, with a KV cache. A `<bs>` removes the last
token of the row's state, never a prompt token (on a state that is only the prompt it is a no-op);
the `<bs>` is itself fed to the model, which then predicts the next token of the shortened state
knowing that a deletion just happened, exactly as `divlab.models.gpt.backspace_attention` lays out
a training sequence. Rows delete different positions at different steps, so instead of popping a
batch-wide `KVCache` (which holds one length for all rows; `KVCache.pop` serves batch size 1) the
cache keeps every fed position and a per-row attention mask hides the deleted ones (and the
`<bs>` positions, which no later token attends to), with position ids equal to the state's length.
Both give the same logits (tests/unit/test_seqmatch_sampler.py checks the sampler against full
recomputation with `backspace_attention`).

`max_steps` caps the total number of actions of a row, backspaces included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divlab.models.gpt import GPT


@dataclass
class Rollout:
    """What `sample_with_backspace` returns; sequences feed `backspace_attention` unchanged."""

    tokens: Tensor          # (B, L0 + max_steps) real input, then the actions, then pad_id
    length: Tensor          # (B,) real tokens per row
    prompt_len: Tensor      # (B,) protected tokens per row
    n_actions: Tensor       # (B,) actions taken (the <eos> and every <bs> included)
    n_backspace: Tensor     # (B,) <bs> actions taken
    ended: Tensor           # (B,) bool: the row emitted <eos> within max_steps
    states: list[list[int]] # per row: the final state after the prompt, backspaces applied, no <eos>


@torch.no_grad()
def sample_with_backspace(
    model: GPT,
    inputs: Tensor,
    *,
    input_len: Tensor,              # (B,) real tokens of each row of inputs (the rest is padding)
    prompt_len: Tensor,             # (B,) leading tokens <bs> never deletes (<= input_len)
    max_steps: int,                 # cap on actions per row, backspaces included
    bs_id: int,                     # <bs>
    eos_id: int,                    # <eos>: ends a row
    pad_id: int,                    # fills the tail of the returned rows
    never: tuple[int, ...] = (),    # token ids never sampled (e.g. <pad>, <bos>)
    temperature: float = 1.0,       # 0 = greedy
    top_k: int | None = None,       # keep the k largest logits
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample continuations of `inputs` (B, L0) with the backspace action; see the module docstring."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    device = inputs.device
    b, l0 = inputs.shape
    input_len, prompt_len = input_len.to(device).long(), prompt_len.to(device).long()
    if bool((prompt_len > input_len).any()) or bool((input_len < 1).any()) or bool((input_len > l0).any()):
        raise ValueError("need 1 <= input_len <= inputs.shape[1] and prompt_len <= input_len for every row.")
    width = l0 + max_steps
    cache = model.new_kv_cache(max_length=width)
    real = torch.arange(l0, device=device)[None] < input_len[:, None]                  # (B, L0)
    causal = torch.ones(l0, l0, dtype=torch.bool, device=device).tril()
    mask0 = (causal[None] & real[:, None, :]) | torch.eye(l0, dtype=torch.bool, device=device)[None]
    logits = model(inputs, attention_mask=mask0, position_ids=torch.arange(l0, device=device)[None].expand(b, l0),
                   kv_cache=cache)
    next_logits = logits[torch.arange(b, device=device), input_len - 1]

    alive = torch.zeros(b, width, dtype=torch.bool, device=device)   # cache columns of each row's state
    alive[:, :l0] = real
    stacks = [list(range(int(n))) for n in input_len.tolist()]
    n_prompt = prompt_len.tolist()
    actions = torch.full((b, max_steps), -1, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_actions = torch.zeros(b, dtype=torch.long, device=device)
    n_bs = torch.zeros(b, dtype=torch.long, device=device)
    blocked = list(never)
    for step in range(max_steps):
        if blocked:
            next_logits = next_logits.clone()
            next_logits[:, blocked] = float("-inf")
        tok = GPT._sample(next_logits, temperature=temperature, top_k=top_k, generator=generator)
        active = ~done
        actions[:, step] = torch.where(active, tok, torch.full_like(tok, -1))
        n_actions += active.long()
        n_bs += (active & (tok == bs_id)).long()
        col = l0 + step
        positions = [0] * b
        born, dead = [], []                     # rows whose new token is alive; (row, column) deleted
        for r, t in zip(torch.nonzero(active).flatten().tolist(), tok[active].tolist()):
            stack = stacks[r]
            if t == bs_id:
                if len(stack) > n_prompt[r]:
                    dead.append((r, stack.pop()))
                positions[r] = len(stack)
            else:
                stack.append(col)
                born.append(r)
                positions[r] = len(stack) - 1
        if born:
            alive[born, col] = True
        if dead:
            rows_, cols_ = zip(*dead)
            alive[list(rows_), list(cols_)] = False
        positions = torch.tensor(positions, dtype=torch.long, device=device)
        done |= active & (tok == eos_id)
        if step == max_steps - 1 or bool(done.all()):
            break
        step_mask = alive[:, : col + 1].clone()
        step_mask[:, col] = True
        next_logits = model(tok[:, None], attention_mask=step_mask[:, None, :], position_ids=positions[:, None],
                            kv_cache=cache)[:, -1]

    tokens = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    length = torch.zeros(b, dtype=torch.long, device=device)
    states = []
    all_tokens = torch.cat([inputs, torch.full((b, max_steps), -1, dtype=torch.long, device=device)], dim=1)
    for r in range(b):
        taken = actions[r][actions[r] >= 0]
        row = torch.cat([inputs[r, : input_len[r]], taken])
        tokens[r, : len(row)] = row
        length[r] = len(row)
        state = [int(all_tokens[r, c]) if c < l0 else int(actions[r, c - l0]) for c in stacks[r][n_prompt[r]:]]
        states.append([t for t in state if t != eos_id])
    return Rollout(tokens=tokens, length=length, prompt_len=prompt_len, n_actions=n_actions, n_backspace=n_bs,
                   ended=done, states=states)

