"""A text corpus cut into fixed-length byte windows, as a LightningDataModule for language modelling.

The text comes from `divlab.data.corpora.read_corpus(corpus)` (e.g. "shakespeare", offline; a list of
names reads each and joins them, in order) or from a text file (`path=...`, UTF-8). It is encoded with
the `ByteTokenizer` (or the `tokenizer` given, e.g. a Hugging Face student's
`divlab.data.hf_tokenizer.HFTokenizer`: windows of its tokens) and split into contiguous train / val /
test parts (in that order, so no window straddles two splits); each part is cut into non-overlapping
windows of `block_size + 1` bytes. Examples use the layout of
`divlab.data.arithmetic`: tokens (L,), prompt_len = 1 (the first byte is given, every later byte
is a target), length = L.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from divlab.data.corpora import read_user_text
from divlab.data.loaders import eval_loader, seeded_train_loader
from divlab.data.tokenizers import ByteTokenizer
from divlab.errors import ConfigError


class WindowDataset(Dataset):
    """Non-overlapping windows of `block_size + 1` tokens of one id sequence."""

    def __init__(self, ids: torch.Tensor, *, block_size: int):
        n = (len(ids) - 1) // block_size
        if n < 1:
            raise ConfigError(
                f"a data split has {len(ids)} tokens, fewer than data.datamodule.block_size + 1 = "
                f"{block_size + 1}; lower block_size or the split fractions"
            )
        self.windows = torch.stack([ids[i * block_size : i * block_size + block_size + 1] for i in range(n)])

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        t = self.windows[i]
        return {"tokens": t, "prompt_len": torch.tensor(1), "length": torch.tensor(len(t))}


def read_text(*, corpus: str | Sequence[str] | None, path: str | None, max_chars: int | None) -> str:
    """The text of a named corpus (or of several, each cut to max_chars, joined by a blank line in the order
    given) or of a file; exactly one of the two must be given."""
    if corpus is not None and not isinstance(corpus, str):
        names = list(corpus)
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"data.datamodule.corpus must be a corpus name or a non-empty list of them, got {names!r}"
            )
        return "\n\n".join(read_text(corpus=n, path=path, max_chars=max_chars) for n in names)
    if (corpus is None) == (path is None):
        raise ConfigError(
            "set exactly one of data.datamodule.corpus (e.g. shakespeare) and data.datamodule.path"
        )
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"data.datamodule.path={path} is not a file")
        text = read_user_text(file, what="data.datamodule.path")
        return text[:max_chars] if max_chars else text
    from divlab.data.mixture import read_group_text

    return read_group_text(corpus, max_chars=max_chars)  # a named corpus, or hf:<dataset>[:<split>[:<field>]]


class TextWindowsDataModule(pl.LightningDataModule):
    """Byte-level LM windows over a corpus or a text file."""

    kind = "text"  # tasks read this: text-generation metrics, judge, SequenceMatch text rollouts

    def __init__(
        self,
        *,
        corpus: str | Sequence[str] | None = "shakespeare",  # a read_corpus name, hf:<dataset>[:<split>
        # [:<field>]], or a list of them (joined in order); null when path is set
        path: str | None = None,  # a UTF-8 text file instead of a named corpus
        max_chars: int | None = None,  # keep only the first characters, of each corpus of a list (None: all)
        block_size: int = 128,  # tokens a model sees per window
        val_fraction: float = 0.05,  # tail part of the text before the test part
        test_fraction: float = 0.05,  # last part of the text
        batch_size: int = 32,  # per process
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
        tokenizer=None,
    ):  # None: bytes (ByteTokenizer); or an HFTokenizer (HF students)
        super().__init__()
        if block_size < 2:
            raise ConfigError(f"data.datamodule.block_size must be >= 2, got {block_size}")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < frac < 0.5:
                raise ConfigError(f"data.datamodule.{name} must be in (0, 0.5), got {frac}")
        if path is not None:
            corpus = None
        self.corpus, self.path, self.max_chars, self.block_size = corpus, path, max_chars, block_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
        self.vocab_size = self.tokenizer.vocab_size
        self.max_len = block_size + 1
        self._splits = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        text = read_text(corpus=self.corpus, path=self.path, max_chars=self.max_chars)
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        n_val, n_test = int(len(ids) * self.val_fraction), int(len(ids) * self.test_fraction)
        n_train = len(ids) - n_val - n_test
        parts = {
            "train": ids[:n_train],
            "val": ids[n_train : n_train + n_val],
            "test": ids[n_train + n_val :],
        }
        self._splits = {name: WindowDataset(part, block_size=self.block_size) for name, part in parts.items()}

    def dataset(self, split: str) -> WindowDataset:
        self.setup()
        return self._splits[split]

    def content_ids(self) -> list[int]:
        """The token ids that occur in the train split (SequenceMatch draws its noise tokens from them)."""
        return torch.unique(self.dataset("train").windows).tolist()

    def train_dataloader(self) -> DataLoader:
        return seeded_train_loader(
            self._splits["train"],
            batch_size=self.batch_size,
            seed=self.seed,
            num_workers=self.num_workers,
            trainer=self.trainer,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self._splits["val"], batch_size=64, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self._splits["test"], batch_size=64, num_workers=self.num_workers)
