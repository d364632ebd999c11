"""scikit-learn's embedded 8x8 digits as a LightningDataModule (no download). `subset=[labels]` keeps only
those digits in every split (SuperDiff trains one model per subset); the pixels are standardised with the
statistics of the *full* training split either way, so models of different subsets share one pixel space."""

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError


def stratified_split(labels: np.ndarray, *, val_fraction: float, test_fraction: float, data_seed: int):
    """Index arrays (train, val, test), stratified by label and fixed by data_seed."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=data_seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=labels[rest], random_state=data_seed)
    return np.sort(train), np.sort(val), np.sort(test)


def check_fractions(*, val_fraction: float, test_fraction: float) -> None:
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ConfigError(f"data.datamodule.{name} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError("data.datamodule.val_fraction + test_fraction must be < 1")


def check_digit_subset(subset) -> list[int] | None:
    if subset is None:
        return None
    labels = sorted({int(c) for c in subset})
    if not labels or labels[0] < 0 or labels[-1] > 9:
        raise ConfigError(f"data.datamodule.subset must list digits in 0-9, got {list(subset)!r}")
    return labels


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8x8 digits with a stratified train/val/test split fixed by data_seed."""

    augmented = False  # fixed images: a teacher's logits on them could be cached

    def __init__(
        self,
        *,
        batch_size: int = 64,  # per process
        val_fraction: float = 0.15,  # of all images, stratified
        test_fraction: float = 0.25,  # of all images, stratified
        data_seed: int = 0,  # fixes the split
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
        subset: list | None = None,  # digits to keep (e.g. [0, 1, 2, 3, 4]); None = all ten
    ):
        super().__init__()
        check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        self.subset = check_digit_subset(subset)
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.val_fraction, self.test_fraction, self.data_seed = val_fraction, test_fraction, data_seed
        self.num_classes, self.input_shape = 10, (1, 8, 8)
        self._splits = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        tr, va, te = stratified_split(
            digits.target,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            data_seed=self.data_seed,
        )
        mean, std = x[tr].mean(), x[tr].std()  # normalise with train statistics only (all digits)
        x = (x - mean) / std
        if self.subset is not None:
            tr, va, te = (i[np.isin(digits.target[i], self.subset)] for i in (tr, va, te))
        self._splits = {
            name: TensorDataset(x[i], y[i]) for name, i in (("train", tr), ("val", va), ("test", te))
        }

    mixture = None  # not a Gaussian mixture (the one-step tasks' mode metrics do not apply)

    def points(self, split: str) -> torch.Tensor:
        """All (normalised) images of a split, (n, 1, 8, 8): the reference set of sample metrics."""
        self.setup()
        return self._splits[split].tensors[0]

    def labels(self, split: str) -> torch.Tensor:
        self.setup()
        return self._splits[split].tensors[1]

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
