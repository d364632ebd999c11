"""Teacher-generated responses (sequence-level KD data; Kim & Rush 2016), generated once and cached.

For a (teacher, prompts, generation settings) triple the teacher's responses to every prompt of a data
split are written to `<paths.output_root>/responses/<hash>.jsonl` (one {"index", "prompt", "response"}
row per prompt) under a file lock, so parallel table cells generate them once and every later run
reads them. The hash covers the teacher's model spec (not its cache directory), the data settings, a digest of
the split's tokenised prompts (so an edited data file gets new responses), the split and the
generation settings.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from divlab.data.instruct import left_padded_batches
from divlab.errors import ConfigError
from divlab.utils.console import say
from divlab.utils.hashing import stable_hash

# data keys that do not change which prompts a split holds or how they are tokenised
_DATA_KEYS_IGNORED = ("batch_size", "num_workers", "seed", "tokenizer", "_target_")


def without_cache_dirs(obj):
    if isinstance(obj, dict):
        return {k: without_cache_dirs(v) for k, v in obj.items() if k != "cache_dir"}
    if isinstance(obj, list):
        return [without_cache_dirs(v) for v in obj]
    return obj


def responses_path(cfg: DictConfig, split: str, generation: dict, *, prompts: str) -> Path:
    """`prompts`: a digest of the split's tokenised prompts (a changed data file makes a new entry)."""
    teacher = without_cache_dirs(OmegaConf.to_container(cfg.teacher.model, resolve=True))
    data = OmegaConf.to_container(cfg.data.datamodule, resolve=True)
    data = {k: v for k, v in data.items() if k not in _DATA_KEYS_IGNORED}
    key = stable_hash(
        {"teacher": teacher, "data": data, "split": split, "generation": generation, "prompts": prompts}
    )
    return Path(cfg.paths.output_root) / "responses" / f"{split}-{key}.jsonl"


def _read(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != n or [r["index"] for r in rows] != list(range(n)):
        raise ConfigError(
            f"{path} holds {len(rows)} responses for {n} prompts; delete it to generate them again"
        )
    return [r["response"] for r in rows]


def own_prompt_batches(model, datamodule, split: str, *, batch_size: int):
    """The split's prompts in `model`'s tokens: the data's own batches when `model` has the data's tokenizer
    (vocabulary and chat template), else every example's messages templated by `model.tokenizer`, cut to
    data.datamodule.max_prompt_tokens and left-padded alike (a teacher with another vocabulary: sequence-level
    KD passes text, so it works across tokenizers)."""
    tok, data = model.tokenizer, datamodule.tokenizer
    if tok is data or (tok.get_vocab(), tok.chat_template) == (data.get_vocab(), data.chat_template):
        yield from datamodule.prompt_batches(split, batch_size=batch_size)
        return
    rows = []
    for e in datamodule.examples(split):
        out = tok.apply_chat_template(e["messages"], add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, Mapping) else out  # transformers 5: a BatchEncoding
        rows.append([int(i) for i in ids][-datamodule.max_prompt_tokens :])
    yield from left_padded_batches(rows, batch_size=batch_size, pad_id=model.pad_id)


@torch.no_grad()
def generate_responses(
    model, datamodule, split: str, *, max_new_tokens: int, batch_size: int, temperature: float = 0.0
) -> list[str]:
    """Greedy (temperature 0) or sampled responses of `model` to every prompt of `split`, in order."""
    examples = datamodule.examples(split)
    out: list[str | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    for batch in own_prompt_batches(model, datamodule, split, batch_size=batch_size):
        new = model.generate(
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        for i, row in zip(batch["index"].tolist(), new.tolist()):
            out[i] = decode_response(model.tokenizer, row, eos_id=model.eos_id, pad_id=model.pad_id)
    model.train(was_training)
    return out


def decode_response(tokenizer, ids: list[int], *, eos_id: int, pad_id: int) -> str:
    """Text of a generated row up to its first eos (pads and special tokens dropped)."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return tokenizer.decode([i for i in ids if i != pad_id], skip_special_tokens=True).strip()


def teacher_responses(
    cfg: DictConfig, teacher, datamodule, split: str, *, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """The teacher's greedy responses to `split`'s prompts: read from the cache, or generated once. `teacher`
    is the model, or a function that returns it (called only when the responses must be generated)."""
    generation = {"max_new_tokens": int(max_new_tokens), "temperature": 0.0}
    path = responses_path(cfg, split, generation, prompts=datamodule.prompt_digest(split))
    n = len(datamodule.examples(split))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return _read(path, n)
        say(f"generating the teacher's responses to {n} {split} prompts once; cached in {path}")
        start = time.time()
        model = teacher if isinstance(teacher, torch.nn.Module) else teacher()
        responses = generate_responses(
            model, datamodule, split, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        prompts = [e["prompt"] for e in datamodule.examples(split)]
        text = "".join(
            json.dumps({"index": i, "prompt": p, "response": r}) + "\n"
            for i, (p, r) in enumerate(zip(prompts, responses))
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        say(f"teacher responses ({split}) generated in {time.time() - start:.1f} s")
    return responses
