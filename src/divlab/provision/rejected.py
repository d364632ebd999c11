"""Rejected answers sampled from the start model (data.datamodule.rejected=sampled of task=dpo), sampled once.

The f-DPO issue's offline preference: chosen = the correct answer, rejected = "a plausible wrong answer
(sampled from the start model where possible)". For every prompt of a split the start model (the reference,
before any training) draws `rejected_samples` responses at `rejected_temperature` (top-k off, up to
max_response_tokens - 1 new tokens); the first whose final integer exists and differs from the answer (or that
the data module's own `wrong(text, answer)` accepts: divlab.data.preference_arith) is the rejected response. A prompt with no such sample keeps the perturbed answer of divlab.data.preference; how many
did is logged as a warning per split and returned (task=dpo logs the test share as test/rejected_fallback).

The draws of a split are written to `<paths.output_root>/rejected/<split>-<hash>.jsonl` (one {"index",
"prompt", "rejected" (null: fallback)} row per prompt) under a file lock, so parallel runs sample them once and
every later run reads them (the pattern of divlab.provision.responses). The hash covers the model spec (not its
cache directory), the data settings, a digest of the split's tokenised prompts and answers, the split, the
sampling settings and, when the start model is trained per seed (dpo.init), dpo.init, its recipe and the seed. Sampling runs under a forked RNG seeded by data.datamodule.data_seed, on the GPU when one
is visible.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from divlab.data.instruct import left_padded_batches
from divlab.errors import ConfigError
from divlab.metrics.generation import final_integer
from divlab.provision.responses import _DATA_KEYS_IGNORED, decode_response, without_cache_dirs
from divlab.utils.console import say
from divlab.utils.hashing import stable_hash

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def rejected_path(
    cfg: DictConfig, split: str, sampling: dict, *, prompts: str, start: dict | None = None
) -> Path:
    """`start` (dpo.init, its recipe and the seed, when the start model is trained per seed) joins the hash."""
    model = without_cache_dirs(OmegaConf.to_container(cfg.student.model, resolve=True))
    data = OmegaConf.to_container(cfg.data.datamodule, resolve=True)
    data = {k: v for k, v in data.items() if k not in _DATA_KEYS_IGNORED}
    key = {"model": model, "data": data, "split": split, "sampling": sampling, "prompts": prompts}
    key = stable_hash(key if start is None else {**key, "start": start})
    return Path(cfg.paths.output_root) / "rejected" / f"{split}-{key}.jsonl"


def is_wrong(text: str, answer: str) -> bool:
    """A plausible wrong answer: it states an integer, and its last one is not the answer."""
    value = final_integer(text)
    return value is not None and value != int(answer)


@torch.no_grad()
def sample_wrong_answers(
    model,
    prompts: list[list[int]],
    answers: list[str],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int = 16,
    seed: int = 0,
    wrong=is_wrong,
) -> list[str | None]:
    """Per prompt, the first of n samples of `model` that is `wrong` (text, answer), or None when none is."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    home = next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    found: list[str | None] = [None] * len(prompts)
    rows = [p for p in prompts for _ in range(n)]  # prompt i's samples are rows i*n .. i*n + n - 1
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in left_padded_batches(rows, batch_size=batch_size, pad_id=model.pad_id):
                new = model.generate(
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                )
                for r, ids in zip(batch["index"].tolist(), new.tolist()):
                    i = r // n
                    if found[i] is None:
                        text = decode_response(model.tokenizer, ids, eos_id=model.eos_id, pad_id=model.pad_id)
                        if wrong(text, answers[i]):
                            found[i] = text
    finally:
        model.to(home).train(was_training)
    return found


def _read(path: Path, n: int) -> list[str | None]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != n or [r["index"] for r in rows] != list(range(n)):
        raise ConfigError(
            f"{path} holds {len(rows)} rejected answers for {n} prompts; delete it to sample again"
        )
    return [r["rejected"] for r in rows]


def sampled_rejected(
    cfg: DictConfig, model, datamodule, split: str, *, start: dict | None = None
) -> list[str | None]:
    """The sampled wrong answers of `split` (None: no wrong sample), from the cache or sampled once."""
    dm = datamodule
    sampling = {
        "n": dm.rejected_samples,
        "temperature": dm.rejected_temperature,
        "max_new_tokens": dm.max_response_tokens - 1,
        "seed": dm.data_seed,
    }
    path = rejected_path(cfg, split, sampling, prompts=dm.prompt_digest(split), start=start)
    examples = dm.examples(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return _read(path, len(examples))
        say(
            f"sampling the start model's wrong answers to {len(examples)} {split} prompts once; cached in {path}"
        )
        found = sample_wrong_answers(
            model,
            [row[0] for row in dm.dataset(split).rows],
            [e["answer"] for e in examples],
            n=sampling["n"],
            temperature=sampling["temperature"],
            max_new_tokens=sampling["max_new_tokens"],
            batch_size=2 * dm.batch_size,
            seed=dm.data_seed,
            wrong=getattr(dm, "wrong", is_wrong),
        )
        text = "".join(
            json.dumps({"index": i, "prompt": e["prompt"], "rejected": r}) + "\n"
            for i, (e, r) in enumerate(zip(examples, found))
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return found


def use_sampled_rejected(
    cfg: DictConfig, model, datamodule, *, start: dict | None = None
) -> dict[str, float]:
    """Put the sampled wrong answers into every split of `datamodule`; {split: % of prompts that kept the
    perturbed answer (no wrong sample)}, each split's count also logged as a warning when not 0."""
    shares = {}
    for split in SPLITS:
        n = len(datamodule.examples(split))
        kept = datamodule.use_rejected(split, sampled_rejected(cfg, model, datamodule, split, start=start))
        if kept:
            log.warning(
                "%d of %d %s prompts had no wrong answer among data.datamodule.rejected_samples=%d samples of the "
                "start model: they keep the perturbed rejected answer.",
                kept,
                n,
                split,
                datamodule.rejected_samples,
            )
        shares[split] = 100.0 * kept / max(n, 1)
    return shares
