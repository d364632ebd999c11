"""The frozen teacher's final hidden states at the response positions of a split, computed once and cached.

With fixed responses (the data's, or the teacher's cached greedy ones) the teacher sees the same rows in
every run, epoch and table cell, so `lm_distill.teacher_outputs: cached` runs its forward pass once per
(teacher, tokenised rows) and stores, for every example, the hidden states h_t (n_i, H) of the positions
prompt_len - 1 .. length - 2 (those that predict a response token or eos; divlab.objectives.lm.action_mask).
The loss recomputes the teacher's logits h_t @ W_t.T chunk by chunk, so it is the full-vocabulary loss,
exact up to float rounding; only the teacher's blocks are skipped. Storage: H floats per response token in
the teacher's dtype (2,304 bytes at SmolLM2-135M's H = 576 in float32), one safetensors file per split
under `<paths.output_root>/teacher_states/`, written under a file lock (temp file + rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from divlab.errors import ConfigError
from divlab.objectives.lm import action_mask
from divlab.provision.responses import without_cache_dirs
from divlab.utils.console import say
from divlab.utils.hashing import stable_hash


def rows_digest(dataset) -> str:
    """sha256 of a PromptResponseDataset's token rows, prompt and row lengths."""
    h = hashlib.sha256()
    for t in (dataset.tokens, dataset.prompt_len, dataset.length):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def states_path(cfg: DictConfig, split: str, dataset) -> Path:
    teacher = without_cache_dirs(OmegaConf.to_container(cfg.teacher.model, resolve=True))
    key = stable_hash({"teacher": teacher, "rows": rows_digest(dataset), "split": split})
    return Path(cfg.paths.output_root) / "teacher_states" / f"{split}-{key}.safetensors"


@torch.no_grad()
def compute_states(teacher, dataset, *, batch_size: int) -> list[Tensor]:
    """Per example, the teacher's final hidden states (n_i, H) at its response positions, in order."""
    was_training = teacher.training
    teacher.eval()
    out: list[Tensor] = []
    for lo in range(0, len(dataset), batch_size):
        length = dataset.length[lo : lo + batch_size]
        prompt_len = dataset.prompt_len[lo : lo + batch_size]
        tokens = dataset.tokens[lo : lo + batch_size, : int(length.max())]
        attention = torch.arange(tokens.shape[1])[None] < length[:, None]
        device = teacher.output_weight.device
        hidden = teacher.hidden_states(tokens.to(device), attention.to(device))
        mask = action_mask(tokens.shape, prompt_len=prompt_len, length=length)
        out += [h[:-1][m.to(h.device)].cpu() for h, m in zip(hidden, mask)]
    teacher.train(was_training)
    return out


def _save(path: Path, states: list[Tensor]) -> None:
    from safetensors.torch import save_file

    offsets = torch.tensor([0] + [len(s) for s in states]).cumsum(0)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"hidden": torch.cat(states).contiguous(), "offsets": offsets}, tmp)
    os.replace(tmp, path)


def _load(path: Path, dataset, width: int) -> list[Tensor]:
    from safetensors.torch import load_file

    fix = f"delete {path} to compute it again"
    try:
        data = load_file(str(path))
        hidden, offsets = data["hidden"], data["offsets"]
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"{path} is not a readable teacher-state cache ({exc}); {fix}") from exc
    expected = (dataset.length - dataset.prompt_len).tolist()
    counts = offsets.diff().tolist()
    if counts != expected or hidden.ndim != 2 or hidden.shape[1] != width or len(hidden) != sum(expected):
        raise ConfigError(
            f"{path} does not match the split's {len(expected)} rows or the teacher's width; {fix}"
        )
    return list(torch.split(hidden, counts))


def teacher_states(cfg: DictConfig, teacher, datamodule, split: str, *, batch_size: int) -> list[Tensor]:
    """The teacher's hidden states at the response positions of every example of `split` (cached)."""
    dataset = datamodule.dataset(split)
    path = states_path(cfg, split, dataset)
    width = int(teacher.output_weight.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return _load(path, dataset, width)
        start = time.time()
        states = compute_states(teacher, dataset, batch_size=batch_size)
        _save(path, states)
        n = sum(len(s) for s in states)
        say(
            f"teacher hidden states of {len(states)} {split} rows ({n} response tokens, "
            f"{path.stat().st_size / 2**20:.1f} MiB) computed in {time.time() - start:.1f} s; cached in {path}"
        )
    return states
