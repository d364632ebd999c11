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
A model without `new_kv_cache` (a Hugging Face `HFCausalLM`) is sampled by
`sample_by_recompute`: the same semantics, each step a full forward pass.

`bs_state` chooses what the model sees after a `<bs>` (see divlab.objectives.seqmatch):
"conditioned" (default) as above; "popped" (SequenceMatch's reference) returns to the shortened
prefix: the next action is drawn from the logits of the prefix's last alive token (kept from when it
was fed), as if the cache had been popped; the fed `<bs>` column stays hidden from every later token,
so it changes nothing else. Both match a full recomputation of the same semantics in training
(`backspace_attention` + `backspace_state_index`).

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

    tokens: Tensor  # (B, L0 + max_steps) real input, then the actions, then pad_id
    length: Tensor  # (B,) real tokens per row
    prompt_len: Tensor  # (B,) protected tokens per row
    n_actions: Tensor  # (B,) actions taken (the <eos> and every <bs> included)
    n_backspace: Tensor  # (B,) <bs> actions taken
    ended: Tensor  # (B,) bool: the row emitted <eos> within max_steps
    states: list[list[int]]  # per row: the final state after the prompt, backspaces applied, no <eos>


@torch.no_grad()
def sample_with_backspace(
    model: GPT,
    inputs: Tensor,
    *,
    input_len: Tensor,  # (B,) real tokens of each row of inputs (the rest is padding)
    prompt_len: Tensor,  # (B,) leading tokens <bs> never deletes (<= input_len)
    max_steps: int,  # cap on actions per row, backspaces included
    bs_id: int,  # <bs>
    eos_id: int,  # <eos>: ends a row
    pad_id: int,  # fills the tail of the returned rows
    never: tuple[int, ...] = (),  # token ids never sampled (e.g. <pad>, <bos>)
    temperature: float = 1.0,  # 0 = greedy
    top_k: int | None = None,  # keep the k largest logits
    generator: torch.Generator | None = None,
    bs_state: str = "conditioned",  # state after <bs>: prefix + <bs> fed | popped to the prefix (paper)
) -> Rollout:
    """Sample continuations of `inputs` (B, L0) with the backspace action; see the module docstring."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    if bs_state not in ("conditioned", "popped"):
        raise ValueError(f"bs_state must be conditioned or popped, got {bs_state!r}.")
    device = inputs.device
    b, l0 = inputs.shape
    input_len, prompt_len = input_len.to(device).long(), prompt_len.to(device).long()
    if bool((prompt_len > input_len).any()) or bool((input_len < 1).any()) or bool((input_len > l0).any()):
        raise ValueError("need 1 <= input_len <= inputs.shape[1] and prompt_len <= input_len for every row.")
    if not hasattr(model, "new_kv_cache"):  # a Hugging Face model (HFCausalLM): no KV cache, recompute
        return sample_by_recompute(
            model,
            inputs,
            input_len=input_len,
            prompt_len=prompt_len,
            max_steps=max_steps,
            bs_id=bs_id,
            eos_id=eos_id,
            pad_id=pad_id,
            never=never,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            bs_state=bs_state,
        )
    width = l0 + max_steps
    cache = model.new_kv_cache(max_length=width)
    real = torch.arange(l0, device=device)[None] < input_len[:, None]  # (B, L0)
    causal = torch.ones(l0, l0, dtype=torch.bool, device=device).tril()
    mask0 = (causal[None] & real[:, None, :]) | torch.eye(l0, dtype=torch.bool, device=device)[None]
    logits = model(
        inputs,
        attention_mask=mask0,
        position_ids=torch.arange(l0, device=device)[None].expand(b, l0),
        kv_cache=cache,
    )
    next_logits = logits[torch.arange(b, device=device), input_len - 1]
    popped = bs_state == "popped"
    if popped:  # logits of every fed column: a popped state reuses its prefix's
        history = torch.zeros(b, width, logits.shape[-1], dtype=logits.dtype, device=device)
        history[:, :l0] = logits

    alive = torch.zeros(b, width, dtype=torch.bool, device=device)  # cache columns of each row's state
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
        born, dead, back = (
            [],
            [],
            [],
        )  # rows whose new token is alive; (row, column) deleted; (row, prefix end)
        for r, t in zip(torch.nonzero(active).flatten().tolist(), tok[active].tolist()):
            stack = stacks[r]
            if t == bs_id:
                if len(stack) > n_prompt[r]:
                    dead.append((r, stack.pop()))
                positions[r] = len(stack)
                if popped and stack:
                    back.append((r, stack[-1]))
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
        next_logits = model(
            tok[:, None],
            attention_mask=step_mask[:, None, :],
            position_ids=positions[:, None],
            kv_cache=cache,
        )[:, -1]
        if popped:
            history[:, col] = next_logits
            if back:
                rows_, cols_ = zip(*back)
                next_logits = next_logits.clone()
                next_logits[list(rows_)] = history[list(rows_), list(cols_)]

    tokens = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    length = torch.zeros(b, dtype=torch.long, device=device)
    states = []
    all_tokens = torch.cat([inputs, torch.full((b, max_steps), -1, dtype=torch.long, device=device)], dim=1)
    for r in range(b):
        taken = actions[r][actions[r] >= 0]
        row = torch.cat([inputs[r, : input_len[r]], taken])
        tokens[r, : len(row)] = row
        length[r] = len(row)
        state = [
            int(all_tokens[r, c]) if c < l0 else int(actions[r, c - l0]) for c in stacks[r][n_prompt[r] :]
        ]
        states.append([t for t in state if t != eos_id])
    return Rollout(
        tokens=tokens,
        length=length,
        prompt_len=prompt_len,
        n_actions=n_actions,
        n_backspace=n_bs,
        ended=done,
        states=states,
    )


@torch.no_grad()
def last_logits(model, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
    """(B, V) float logits at each row's last real token. An HFCausalLM projects only those B hidden states
    (its forward is hidden_states @ output_weight.T), not all B x L positions: at a 49,152-token vocabulary
    the full logits cost ~L times more than the trunk."""
    rows = torch.arange(len(ids), device=ids.device)
    if hasattr(model, "hidden_states") and hasattr(model, "output_weight"):
        hidden = model.hidden_states(ids, mask)[rows, lengths - 1]
        return (hidden @ model.output_weight.T).float()
    return model(ids, attention_mask=mask)[rows, lengths - 1].float()


def sample_by_recompute(
    model,
    inputs: Tensor,
    *,
    input_len: Tensor,
    prompt_len: Tensor,
    max_steps: int,
    bs_id: int,
    eos_id: int,
    pad_id: int,
    never: tuple[int, ...] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    bs_state: str = "conditioned",
) -> Rollout:
    """`sample_with_backspace` for a model with no divlab KV cache (a Hugging Face `HFCausalLM`): every step
    runs one plain causal pass over each row's state, right-padded, and reads the logits at its last token.
    The state is the alive tokens, plus the `<bs>` just taken when bs_state is "conditioned" (its position id
    is then len(state), as in `backspace_attention`); "popped" drops it, so the next action comes from the
    shortened prefix. Same arguments and result as `sample_with_backspace`; O(max_steps x length) compute."""
    device = inputs.device
    b, l0 = inputs.shape
    stacks = [inputs[r, : int(n)].tolist() for r, n in enumerate(input_len.tolist())]
    n_prompt = prompt_len.tolist()
    after_bs = [False] * b
    actions = torch.full((b, max_steps), -1, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n_actions = torch.zeros(b, dtype=torch.long, device=device)
    n_bs = torch.zeros(b, dtype=torch.long, device=device)
    for step in range(max_steps):
        rows = [s + [bs_id] * (after_bs[r] and bs_state == "conditioned") for r, s in enumerate(stacks)]
        lengths = torch.tensor([len(row) for row in rows], device=device)
        ids = torch.full((b, int(lengths.max())), pad_id, dtype=torch.long, device=device)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        mask = (torch.arange(ids.shape[1], device=device)[None] < lengths[:, None]).long()
        logits = last_logits(model, ids, mask, lengths)
        if never:
            logits[:, list(never)] = float("-inf")
        tok = GPT._sample(logits, temperature=temperature, top_k=top_k, generator=generator)
        active = ~done
        actions[:, step] = torch.where(active, tok, torch.full_like(tok, -1))
        n_actions += active.long()
        n_bs += (active & (tok == bs_id)).long()
        for r in torch.nonzero(active).flatten().tolist():
            t = int(tok[r])
            after_bs[r] = t == bs_id
            if t != bs_id:
                stacks[r].append(t)
            elif len(stacks[r]) > n_prompt[r]:
                stacks[r].pop()
        done |= active & (tok == eos_id)
        if bool(done.all()):
            break
    width = l0 + max_steps
    tokens = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    length = torch.zeros(b, dtype=torch.long, device=device)
    for r in range(b):
        row = torch.cat([inputs[r, : input_len[r]], actions[r][actions[r] >= 0]])
        tokens[r, : len(row)], length[r] = row, len(row)
    states = [[t for t in stack[n_prompt[r] :] if t != eos_id] for r, stack in enumerate(stacks)]
    return Rollout(
        tokens=tokens,
        length=length,
        prompt_len=prompt_len,
        n_actions=n_actions,
        n_backspace=n_bs,
        ended=done,
        states=states,
    )
