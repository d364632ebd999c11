"""Multi-group text data for online data mixing (`data=mixture`).

Each group is one text source (a corpus of `divlab.data.corpora`, a user file/folder, or a
Hugging Face data set `hf:<name>[:<split>[:<field>]]`), byte-tokenised (UTF-8, ids 0..255; or by
`tokenizer=`, e.g. a Hugging Face student's `divlab.data.hf_tokenizer.HFTokenizer`, then "bytes" read "tokens"). Its
bytes are cut, in order, into train | val | test regions (val and test are the last windows, so no
window crosses a split), and each region into non-overlapping windows of context_length + 1 bytes
(input = window[:-1], target = window[1:]).

`MixtureSampler` chooses the training batch of step t as a pure function of (seed, t, p): the
group of each of the B x W slots of the *global* batch (B per rank, W ranks) is drawn from p with
a generator seeded by (seed, t), identical on every rank; the examples of group g are the first
n_g entries of a permutation of that group's windows seeded by (seed, t, g), and rank r takes the
slots r*B .. (r+1)*B - 1. So every rank uses the same proportions and the same group stream, the
ranks' examples are disjoint within a step, and a resumed run sees the batches an uninterrupted
one would. The task asks for the batch of its current step in `training_step`, so a proportion
change made by a mixer after step t applies from step t + 1 exactly (a DataLoader would prefetch
with the old proportions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from divlab.data.corpora import read_corpus
from divlab.data.tokenizers import ByteTokenizer
from divlab.errors import ConfigError

__all__ = ["GroupSplits", "MixtureDataModule", "MixtureSampler", "check_proportions", "group_windows"]

SPLITS = ("train", "val", "test")


def check_proportions(p: Sequence[float], k: int, *, key: str = "proportions") -> np.ndarray:
    """p as a float64 array on the simplex (non-negative, summing to 1 within 1e-6), length k."""
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.shape != (k,) or not np.all(np.isfinite(arr)) or np.any(arr < 0) or abs(arr.sum() - 1.0) > 1e-6:
        raise ConfigError(
            f"{key} must be {k} non-negative numbers summing to 1, got {list(np.round(arr, 6))}."
        )
    return arr / arr.sum()


@dataclass(frozen=True)
class GroupSplits:
    """The windows (n, context_length + 1) of one group, per split, as int64 tensors."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def group_windows(
    data: bytes | np.ndarray,  # bytes, or token ids (a tokenizer's)
    *,
    name: str,  # group name, for error messages
    context_length: int,  # tokens per input; windows hold context_length + 1 bytes
    val_windows: int,  # windows at the end of the train region kept for validation
    test_windows: int,  # windows at the very end kept for testing
    min_train_windows: int = 8,
) -> GroupSplits:
    """Cut one group's bytes (or token ids) into train | val | test windows (in order, non-overlapping)."""
    ids = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else np.asarray(data)
    w = context_length + 1
    n = len(ids) // w
    if n - val_windows - test_windows < min_train_windows:
        raise ConfigError(
            f"group {name!r} has {len(ids)} bytes, too few for {val_windows} val + {test_windows} "
            f"test + {min_train_windows} train windows of {w} bytes; raise data.datamodule.max_chars "
            "or lower val_windows/test_windows."
        )
    windows = torch.from_numpy(ids[: n * w].astype(np.int64).reshape(n, w))
    n_train = n - val_windows - test_windows
    return GroupSplits(
        name, windows[:n_train], windows[n_train : n_train + val_windows], windows[n_train + val_windows :]
    )


@lru_cache(maxsize=32)  # in-process reuse: a mixer's extra runs read the same groups
def read_group_text(name: str, *, max_chars: int | None) -> str:
    """A group's text: `hf:<dataset>[:<split>[:<field>]]` through `datasets`, else `read_corpus`."""
    if not name.startswith("hf:"):
        return read_corpus(name, max_chars=max_chars)
    parts = name[3:].split(":")
    dataset, split, field = parts[0], (parts[1:2] or ["train"])[0], (parts[2:3] or ["text"])[0]
    import datasets  # only for user-named Hugging Face data sets (may need the network or its cache)

    try:
        rows = datasets.load_dataset(dataset, split=split)
    except Exception as err:
        raise ConfigError(
            f"data source {name!r} (data.groups or data.datamodule.corpus) could not be loaded by datasets.load_dataset "
            f"({type(err).__name__}: {err}); check the name or download it first."
        ) from None
    parts, total = [], 0
    for text in rows[field]:
        parts.append(text)
        total += len(text) + 2
        if max_chars is not None and total >= max_chars:
            break
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


class MixtureSampler:
    """Batches of group windows drawn with proportions p that may change between steps.

    `indices(step)` -> (groups, rows): this rank's batch_size group ids and row indices into the
    groups' training windows, a pure function of (seed, step, p) (see the module docstring).
    """

    def __init__(
        self,
        *,
        group_sizes: Sequence[int],  # training windows per group
        batch_size: int,  # examples per rank and step
        seed: int,  # the group-choice and example streams
        rank: int = 0,  # this process's rank
        world_size: int = 1,  # number of processes sharing the global batch
        proportions: Sequence[float] | None = None,  # initial p; None = uniform (stratified)
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"MixtureSampler needs batch_size >= 1 and 0 <= rank < world_size, got "
                f"batch_size={batch_size}, rank={rank}, world_size={world_size}."
            )
        self.group_sizes = [int(n) for n in group_sizes]
        if min(self.group_sizes) < batch_size * world_size:
            raise ConfigError(
                f"every group needs at least batch_size x world_size = {batch_size * world_size} "
                f"training windows, got {self.group_sizes}; raise data.datamodule.max_chars."
            )
        self.k = len(self.group_sizes)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.proportions = check_proportions(
            np.full(self.k, 1.0 / self.k) if proportions is None else proportions, self.k
        )

    def set_proportions(self, p: Sequence[float]) -> None:
        self.proportions = check_proportions(p, self.k)

    def global_groups(self, step: int) -> np.ndarray:
        """Group of each slot of the global batch (batch_size x world_size), the same on every rank."""
        rng = np.random.default_rng([self.seed, step, 0])
        return rng.choice(self.k, size=self.batch_size * self.world_size, p=self.proportions)

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        groups = self.global_groups(step)
        rows = np.empty_like(groups)
        for g in np.unique(groups):
            slots = np.flatnonzero(groups == g)
            rng = np.random.default_rng([self.seed, step, 1 + int(g)])
            rows[slots] = rng.permutation(self.group_sizes[g])[: len(slots)]  # distinct within the step
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return groups[mine], rows[mine]


class _Steps(IterableDataset):
    """Endless step tokens: the task builds each step's batch itself (see the module docstring)."""

    def __iter__(self):
        step = 0
        while True:
            yield step
            step += 1


class MixtureDataModule(pl.LightningDataModule):
    """k text groups: windows per split, a MixtureSampler for training, exact per-rank eval shards."""

    def __init__(
        self,
        *,
        groups: Sequence[str],  # corpus names, paths or hf:<name>; at least 2
        context_length: int = 64,  # tokens per training input
        batch_size: int = 16,  # per process
        max_chars: int | None = 300_000,  # characters read per group (None: all)
        val_windows: int = 32,  # validation windows per group
        test_windows: int = 32,  # test windows per group
        eval_batch_size: int = 64,  # windows per evaluation batch
        seed: int = 0,  # group choice and example streams
        num_workers: int = 0,  # unused: batches are built in the training step
        tokenizer=None,  # None: bytes (ByteTokenizer); or an HFTokenizer (HF students)
    ) -> None:
        super().__init__()
        groups = [str(g) for g in groups]
        if len(groups) < 2 or len(set(groups)) != len(groups):
            raise ConfigError(f"data.groups must name at least two different groups, got {groups}.")
        if context_length < 1 or batch_size < 1 or val_windows < 1 or test_windows < 1:
            raise ConfigError(
                "data.datamodule.context_length, batch_size, val_windows and test_windows must be "
                "positive integers."
            )
        self.groups, self.k = groups, len(groups)
        self.context_length, self.batch_size, self.max_chars = context_length, batch_size, max_chars
        self.val_windows, self.test_windows, self.eval_batch_size = val_windows, test_windows, eval_batch_size
        self.seed = seed
        self.tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.splits: list[GroupSplits] | None = None
        self.sampler: MixtureSampler | None = None

    # the text is read when the module is built, so a missing corpus fails before training
    def prepare_splits(self) -> list[GroupSplits]:
        if self.splits is None:
            self.splits = [
                group_windows(
                    self.encode(read_group_text(g, max_chars=self.max_chars)),
                    name=g,
                    context_length=self.context_length,
                    val_windows=self.val_windows,
                    test_windows=self.test_windows,
                )
                for g in self.groups
            ]
        return self.splits

    def encode(self, text: str) -> bytes | np.ndarray:
        if isinstance(self.tokenizer, ByteTokenizer):
            return text.encode("utf-8")
        return np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_splits()
        if self.sampler is None:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self.sampler = MixtureSampler(
                group_sizes=[len(s.train) for s in self.splits],
                batch_size=self.batch_size,
                seed=self.seed,
                rank=rank,
                world_size=world,
            )

    def train_batch(self, step: int, device: torch.device | str = "cpu"):
        """(inputs, targets, groups) of this rank's batch at `step`, with the current proportions."""
        groups, rows = self.sampler.indices(step)
        windows = torch.stack([self.splits[g].train[r] for g, r in zip(groups, rows)]).to(device)
        return windows[:, :-1], windows[:, 1:], torch.as_tensor(groups, device=device)

    def eval_dataset(self, split: str) -> TensorDataset:
        """All groups' windows of `split` with their group ids, this rank's shard (rank::world)."""
        windows = torch.cat([getattr(s, split) for s in self.prepare_splits()])
        group_ids = torch.cat([torch.full((len(getattr(s, split)),), g) for g, s in enumerate(self.splits)])
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return TensorDataset(windows[rank::world], group_ids[rank::world])

    def eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.eval_dataset(split), batch_size=self.eval_batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader("test")
