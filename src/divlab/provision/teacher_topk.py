"""The frozen teacher's top-k next-token distributions at the response positions of a split, computed once.

`lm_distill.teacher_outputs: topk` (with `lm_distill.topk: k`) runs the teacher once per (teacher spec,
tokenised rows, k, temperature) and stores, for every response position (prompt_len - 1 .. length - 2, as
divlab.objectives.lm.action_mask), the ids of the k most probable tokens of softmax(logits / T), their
log-probabilities and the log of the remaining (tail) mass (divlab.divergences.topk, eq. 1). Later runs and
epochs read these instead of the teacher, which is then never built.

Temperature: a truncated distribution cannot be re-tempered exactly (the tail mass at another T depends on
the logits that were dropped), so the cache holds the tempered distribution and T is part of its key; the
default T = 1 is shared by every divergence. Ids are the same at every T.

Layout: `<paths.output_root>/teacher_topk/<split>-<hash>/shard-00000.safetensors, ...` (safetensors; each
shard holds whole examples: "ids" (n, k) uint16 when V <= 65,536 else int32, "log_probs" (n, k) float16,
"tail" (n,) float16, "offsets" (examples + 1,) int64) and `index.json` (k, V, T, shards, the teacher's
tokenizer signature and context), written under a file lock into a temporary folder that is renamed
into place, so parallel table cells compute it once. Readers memory-map the shards (safetensors
`safe_open`) and slice one example at a time. Bytes per response token: k * (2 + 2) + 2 (258 at k = 64).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from divlab.divergences.topk import topk_log_probs
from divlab.errors import ConfigError
from divlab.objectives.lm import action_mask
from divlab.provision.responses import without_cache_dirs
from divlab.provision.teacher_states import rows_digest
from divlab.utils.console import say
from divlab.utils.hashing import stable_hash

SHARD_TOKENS = 2**20  # response positions per shard (about 260 MB at k = 64); whole examples per shard
LOGIT_ROWS = 2**22  # teacher logits per chunk when the top-k is taken (16 MiB in float32)
FORMAT = 1


def topk_path(cfg: DictConfig, split: str, dataset, *, k: int, temperature: float) -> Path:
    teacher = without_cache_dirs(OmegaConf.to_container(cfg.teacher.model, resolve=True))
    key = stable_hash(
        {
            "teacher": teacher,
            "rows": rows_digest(dataset),
            "split": split,
            "k": int(k),
            "T": float(temperature),
        }
    )
    return Path(cfg.paths.output_root) / "teacher_topk" / f"{split}-{key}"


def tokenizer_signature(model) -> dict:
    """What check_same_tokenizer compares, kept in the index so a later run checks its student without
    building the teacher."""
    from divlab.models.hf.lm import PROBE_TEXT

    tok = model.tokenizer
    return {
        "output rows": int(model.vocab_size),
        "tokenizer size": len(tok),
        "eos id": int(model.eos_id),
        "probe ids": [int(i) for i in tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]],
    }


class TopkCache:
    """A written top-k cache, memory-mapped: rows(indices) -> (ids long, log_probs float32, tail float32)
    of those examples' response positions, concatenated in the given order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fix = f"delete {self.path} to compute it again"
        try:
            self.index = json.loads((self.path / "index.json").read_text())
            self.k, self.vocab = int(self.index["k"]), int(self.index["vocab"])
            self._where: list[tuple[int, int, int]] = []  # example -> (shard, lo, hi)
            for s in range(len(self.index["shards"])):
                offsets = self._handle(s).get_tensor("offsets").tolist()
                self._where += [(s, a, b) for a, b in zip(offsets[:-1], offsets[1:])]
        except Exception as exc:  # a truncated or foreign folder
            raise ConfigError(f"{self.path} is not a readable teacher top-k cache ({exc}); {fix}") from exc

    def _handle(self, shard: int):
        from safetensors import safe_open

        handles = self.__dict__.setdefault("_handles", {})
        if shard not in handles:
            handles[shard] = safe_open(str(self.path / self.index["shards"][shard]), framework="pt")
        return handles[shard]

    def __getstate__(self):  # open files do not travel to spawned processes; they reopen there
        return {k: v for k, v in self.__dict__.items() if k != "_handles"}

    def counts(self) -> list[int]:
        return [b - a for _, a, b in self._where]

    def rows(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        parts: dict[str, list[Tensor]] = {"ids": [], "log_probs": [], "tail": []}
        for i in indices:
            shard, lo, hi = self._where[i]
            handle = self._handle(shard)
            for name in parts:
                parts[name].append(handle.get_slice(name)[lo:hi])
        ids, logp, tail = (torch.cat(parts[n]) for n in ("ids", "log_probs", "tail"))
        return ids.long(), logp.float(), tail.float()


def check_student(cache: TopkCache, student, *, needed_context: int) -> None:
    """The student must share the tokenizer of the teacher that wrote the cache (check_same_tokenizer's
    checks, read from the index), and that teacher's context must hold a prompt and response."""
    teacher = cache.index["teacher"]
    ours = tokenizer_signature(student)
    for what, value in ours.items():
        if teacher.get(what) != value:
            raise ConfigError(
                f"teacher.model and student.model ({student.description}) do not share a tokenizer "
                f"({what} differs from the one recorded in {cache.path / 'index.json'}); give student.model "
                f"a model with the teacher.model's tokenizer"
            )
    if teacher["context length"] < needed_context:
        raise ConfigError(
            f"teacher.model has a context of {teacher['context length']} tokens, shorter than a prompt and "
            f"response ({needed_context}); lower data.datamodule.max_*_tokens"
        )


def bytes_per_token(k: int, vocab: int) -> int:
    return k * ((2 if vocab <= 2**16 else 4) + 2) + 2


@torch.no_grad()
def _positions(teacher, dataset, *, batch_size: int, k: int, temperature: float):
    """Per example, (ids, log_probs, tail) of its response positions, in order."""
    device = teacher.output_weight.device
    weight = teacher.output_weight
    rows = max(1, LOGIT_ROWS // weight.shape[0])
    for lo in range(0, len(dataset), batch_size):
        length = dataset.length[lo : lo + batch_size]
        prompt_len = dataset.prompt_len[lo : lo + batch_size]
        tokens = dataset.tokens[lo : lo + batch_size, : int(length.max())]
        attention = torch.arange(tokens.shape[1])[None] < length[:, None]
        hidden = teacher.hidden_states(tokens.to(device), attention.to(device))
        mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
        for h, m in zip(hidden, mask):
            h = h[:-1][m.to(h.device)] / temperature  # logits / T = (h / T) @ W.T
            parts = [topk_log_probs(h[a : a + rows] @ weight.t(), k) for a in range(0, len(h), rows)]
            yield tuple(torch.cat([p[j] for p in parts]).cpu() for j in range(3))


def write_topk_cache(teacher, dataset, path: Path, *, k: int, temperature: float, batch_size: int) -> dict:
    """Compute the top-k of every response position of `dataset` with `teacher` and write the folder `path`
    (absent; its parent exists); returns the index."""
    from safetensors.torch import save_file

    vocab = int(teacher.output_weight.shape[0])
    id_dtype = torch.uint16 if vocab <= 2**16 else torch.int32
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    shards, buffer, positions = [], [], 0

    def flush():
        ids, logp, tail = (torch.cat([b[j] for b in buffer]) for j in range(3))
        offsets = torch.tensor([0] + [len(b[0]) for b in buffer]).cumsum(0)
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {"ids": ids.to(id_dtype), "log_probs": logp.half(), "tail": tail.half(), "offsets": offsets}
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp / name))
        shards.append(name)
        buffer.clear()

    try:
        for example in _positions(teacher, dataset, batch_size=batch_size, k=k, temperature=temperature):
            buffer.append(example)
            positions += len(example[0])
            if sum(len(b[0]) for b in buffer) >= SHARD_TOKENS:
                flush()
        if buffer or not shards:
            flush()
        k_stored = min(int(k), vocab)
        index = {
            "format": FORMAT,
            "k": k_stored,
            "vocab": vocab,
            "temperature": float(temperature),
            "examples": len(dataset),
            "positions": positions,
            "bytes_per_token": bytes_per_token(k_stored, vocab),
            "shards": shards,
            "teacher": {**tokenizer_signature(teacher), "context length": int(teacher.context_length)},
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def teacher_topk(
    cfg: DictConfig,
    get_teacher: Callable,
    datamodule,
    split: str,
    *,
    k: int,
    temperature: float,
    batch_size: int,
) -> TopkCache:
    """The teacher's top-k cache of `split`: opened when it exists (the teacher is not built), else computed
    once with get_teacher() (a function returning the frozen teacher) and written."""
    dataset = datamodule.dataset(split)
    path = topk_path(cfg, split, dataset, k=k, temperature=temperature)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            start = time.time()
            index = write_topk_cache(
                get_teacher(), dataset, path, k=k, temperature=temperature, batch_size=batch_size
            )
            size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            say(
                f"teacher top-{index['k']} of {len(dataset)} {split} rows ({index['positions']} response tokens, "
                f"{index['bytes_per_token']} bytes each, {size / 2**20:.1f} MiB) computed in "
                f"{time.time() - start:.1f} s; cached in {path}"
            )
        cache = TopkCache(path)
    expected = (dataset.length - dataset.prompt_len).tolist()
    if cache.counts() != expected:
        raise ConfigError(
            f"{path} holds {len(cache.counts())} rows that do not match the split's {len(expected)} rows; "
            f"delete {path} to compute it again"
        )
    return cache
