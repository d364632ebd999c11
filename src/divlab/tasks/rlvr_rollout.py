"""The sampling half of `task=rlvr` (divlab.tasks.rlvr): completions of arithmetic prompts, their per-token
log-probabilities, verifiable rewards, pass@k counts and the rehearsal set sampled once and cached.

The policy's distribution is pi(. | s) = softmax(logits / temperature) over the tokens other than <pad>, <bos>
and <bs> (`NEVER`): samples are drawn from it (`sample_completions`, the backspace-aware sampler with <bs>
never drawn, so a completion is plain tokens ending in <eos>) and `token_logps` scores tokens under the same
distribution, so ratios pi_theta / pi_old and pi_theta / pi_ref are ratios of the distributions sampled from.
A completion that does not end in <eos> within `max_new_tokens` scores reward 0.

Rewards: `exact_match` (the completion equals the data's answer), or a user function named `module:function`
taking (prompt, completion, answer) strings and returning a number (`resolve_reward`, `check_reward`).
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor, nn

from divlab.errors import ConfigError
from divlab.objectives.lm import action_mask
from divlab.tasks.seqmatch_sampler import sample_with_backspace

OPS = "+-"
MAX_ROWS = 2048  # sequences per sampler call (memory bound of the evaluation's n samples x problems)


def exact_match(prompt: str, completion: str, answer: str) -> float:
    """The offline reward: 1.0 when the completion is exactly the answer, else 0.0."""
    return float(completion.strip() == answer.strip())


def resolve_reward(spec: str) -> Callable[[str, str, str], float]:
    """rlvr.reward: `exact_match`, or `module:function` (imported now)."""
    if spec == "exact_match":
        return exact_match
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(
            f"rlvr.reward={spec!r} is neither exact_match nor an import path module:function; "
            f"give e.g. mypkg.rewards:score"
        )
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(
            f"rlvr.reward={spec} cannot be imported ({type(e).__name__}); give module:function of an importable "
            f"function (prompt, completion, answer) -> float"
        ) from None
    if not callable(fn):
        raise ConfigError(
            f"rlvr.reward={spec} is not a function; name a callable (prompt, completion, answer)"
        )
    return fn


def call_reward(fn: Callable, spec: str, prompt: str, completion: str, answer: str) -> float:
    value = fn(prompt, completion, answer)
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(
            f"rlvr.reward={spec} returned {value!r} ({type(value).__name__}) for the prompt {prompt!r}; "
            f"it must return a finite number"
        )
    return float(value)


def check_reward(fn: Callable, spec: str, prompt: str, answer: str) -> None:
    """Before training: the reward of the data's own answer to a training prompt is a finite number."""
    call_reward(fn, spec, prompt, answer, answer)


def op_of(prompt: str) -> str | None:
    """The operation of an arithmetic prompt ("07+23=" -> "+"); operands never contain + or -."""
    return next((c for c in prompt if c in OPS), None)


def never_ids(tokenizer) -> tuple[int, ...]:
    """NEVER: <pad>, <bos> and <bs> (when the tokenizer has it) are never sampled nor scored."""
    return tuple(i for i in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.bs_id) if i is not None)


def problem_texts(tokens: Tensor, prompt_len: Tensor, length: Tensor, tokenizer) -> tuple[list, list]:
    """(prompts, answers) decoded from rows laid out as `<bos> prompt answer <eos>` (divlab.data.arithmetic)."""
    prompts, answers = [], []
    for row, p, n in zip(tokens.tolist(), prompt_len.tolist(), length.tolist()):
        prompts.append(tokenizer.decode(row[1:p]))
        answers.append(tokenizer.decode(row[p : n - 1]))
    return prompts, answers


@dataclass
class Completions:
    tokens: Tensor  # (N, L) prompt, completion (with its <eos> if it ended), then <pad>
    prompt_len: Tensor  # (N,)
    length: Tensor  # (N,) real tokens per row
    mask: Tensor  # (N, L - 1) bool: the completion's tokens (action_mask)
    ended: Tensor  # (N,) bool: the row emitted <eos>
    texts: list[str]  # (N,) the decoded completions, <eos> excluded


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    tokens: Tensor,
    prompt_len: Tensor,
    *,
    n: int,  # samples per prompt; rows come out grouped: prompt 0's n samples, then prompt 1's, ...
    tokenizer,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator | None,
) -> Completions:
    """n completions of each prompt (tokens (B, L), prompt_len (B,)), the model in eval mode meanwhile."""
    width = int(prompt_len.max())
    inputs = tokens[:, :width].repeat_interleave(n, dim=0)
    plen = prompt_len.repeat_interleave(n)
    was_training = model.training
    model.eval()
    parts = []
    try:
        for lo in range(0, len(inputs), MAX_ROWS):
            parts.append(
                sample_with_backspace(
                    model,
                    inputs[lo : lo + MAX_ROWS],
                    input_len=plen[lo : lo + MAX_ROWS],
                    prompt_len=plen[lo : lo + MAX_ROWS],
                    max_steps=max_new_tokens,
                    bs_id=-1 if tokenizer.bs_id is None else tokenizer.bs_id,
                    eos_id=tokenizer.eos_id,
                    pad_id=tokenizer.pad_id,
                    never=never_ids(tokenizer),
                    temperature=temperature,
                    generator=generator,
                )
            )
    finally:
        model.train(was_training)
    out = torch.cat([p.tokens for p in parts])  # every chunk is prompt width + max_new_tokens wide
    length = torch.cat([p.length for p in parts])
    out = out[:, : int(length.max())]
    return Completions(
        tokens=out,
        prompt_len=plen,
        length=length,
        mask=action_mask(out.shape, prompt_len=plen, length=length),
        ended=torch.cat([p.ended for p in parts]),
        texts=[tokenizer.decode(s) for p in parts for s in p.states],
    )


def token_logps(
    model: nn.Module, tokens: Tensor, mask: Tensor, *, temperature: float, never: tuple
) -> Tensor:
    """(N, L - 1) float32 log pi(tokens[:, t + 1] | tokens[:, :t + 1]) under the sampling distribution (module
    docstring); 0 where `mask` is False. Gradients flow to the model unless called under no_grad."""
    logits = model(tokens[:, :-1]).float() / temperature
    if never:
        logits = logits.index_fill(-1, torch.tensor(never, device=logits.device), float("-inf"))
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return torch.where(mask, logp, torch.zeros_like(logp))


def rewards(fn: Callable, spec: str, prompts: list, answers: list, done: Completions, n: int) -> Tensor:
    """(B * n,) rewards of grouped completions (prompt j's samples are rows j*n .. j*n + n - 1)."""
    values = [
        call_reward(fn, spec, prompts[i // n], text, answers[i // n]) if ended else 0.0
        for i, (text, ended) in enumerate(zip(done.texts, done.ended.tolist()))
    ]
    return torch.tensor(values, dtype=torch.float32, device=done.tokens.device)


# ----------------------------------------------------------------------------- the rehearsal set


def load_or_sample_rehearsal(path: Path, sample: Callable[[], dict]) -> dict:
    """The rehearsal set at `path`, sampled by `sample()` (a dict of CPU tensors) only when the file is missing;
    under a file lock, so parallel runs sample it once; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            data = sample()
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(data, tmp)
            os.replace(tmp, path)
            return data
    return torch.load(path, map_location="cpu", weights_only=True)
