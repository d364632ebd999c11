"""Fashion-MNIST from its four IDX files (Debian's `dataset-fashion-mnist`, or any copy).

Also home of the small readers the other file-based modules share: `read_maybe_gzip` (plain or
gzip, told apart by the first two bytes), `read_idx` (the IDX format of MNIST-like data sets, with
its magic number and size checked) and `holdout_split` (a stratified validation set carved from a
training set by a data seed).
"""

import gzip
import math
import struct
import zlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
GET_FASHION = "run `make data-fashion` (or `apt-get install dataset-fashion-mnist`)"

# IDX type byte -> numpy dtype (multi-byte types are big-endian)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # uint8 with 3 dimensions / with 1 dimension


def read_maybe_gzip(path: str | Path, *, fix: str) -> bytes:
    """The bytes of `path`, gunzipped if it is a gzip file; `fix` ends the error sentence."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        if not gzipped:
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off file an EOFError
        raise ConfigError(f"{path} cannot be read ({err}); {fix}.") from None


def read_idx(path: str | Path, *, magic: int | None = None, fix: str) -> np.ndarray:
    """An IDX file as a native-endian array; checks the magic number (if given) and the size."""
    raw = read_maybe_gzip(path, fix=fix)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found is None or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ConfigError(
            f"{path} is not an IDX file (it starts with bytes {raw[:4].hex() or 'nothing'}); {fix}."
        )
    if magic is not None and found != magic:
        raise ConfigError(
            f"{path} has IDX magic number 0x{found:08x} where 0x{magic:08x} was expected "
            f"(images and labels swapped, or another file); {fix}."
        )
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ConfigError(f"{path} is truncated inside its IDX header; {fix}.")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    size = start + math.prod(shape) * dtype.itemsize
    if len(raw) != size:
        what = "truncated" if len(raw) < size else "longer than its header says"
        raise ConfigError(
            f"{path} is {what}: {len(raw)} bytes where an IDX array of shape {shape} needs {size}; {fix}."
        )
    return np.frombuffer(raw, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def holdout_split(labels: np.ndarray, *, val_size: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, val): `val_size` items held out, stratified by label, fixed by data_seed."""
    idx = np.arange(len(labels))
    if val_size == 0:
        return idx, idx[:0]
    try:
        train, val = train_test_split(idx, test_size=val_size, stratify=labels, random_state=data_seed)
    except ValueError as err:
        raise ConfigError(
            f"data.datamodule.val_size={val_size} cannot be held out, stratified, from "
            f"{len(labels)} training images ({err}); choose a smaller value or 0."
        ) from None
    return np.sort(train), np.sort(val)


def check_val_size(val_size: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ConfigError(f"data.datamodule.val_size must be an integer >= 0, got {val_size!r}")
    return val_size


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST, 28x28 grey: train (minus a stratified validation hold-out) and the 10k test set.

    Files are found under `root` (or any folder below it) as `train-images-idx3-ubyte`,
    `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or
    gzipped (`.gz`). val_size=0 validates on the test set.
    """

    augmented = False  # no random augmentation: teacher logits can be cached

    def __init__(
        self,
        *,
        root: str = FASHION_ROOT,  # folder holding the four IDX files (plain or .gz)
        batch_size: int = 64,  # per process
        val_size: int = 5000,  # train images held out for validation, stratified; 0: use test
        data_seed: int = 0,  # fixes the hold-out (not the batch order)
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
    ):
        super().__init__()
        self.root, self.val_size, self.data_seed = Path(root), check_val_size(val_size), data_seed
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.num_classes, self.input_shape, self.classes = 10, (1, 28, 28), FASHION_CLASSES
        self.files = {
            split: tuple(self._find(name) for name in names) for split, names in FASHION_FILES.items()
        }
        self._splits = None

    def _find(self, name: str) -> Path:
        stem, _, kind = name.rpartition("-idx")  # also accept the `train-images.idx3-ubyte` spelling
        names = [n + gz for n in (name, f"{stem}.idx{kind}") for gz in (".gz", "")]
        if self.root.is_dir():
            for n in names:
                if (self.root / n).is_file():
                    return self.root / n
            for n in names:
                hits = sorted(p for p in self.root.rglob(n) if p.is_file())
                if hits:
                    return hits[0]
        raise ConfigError(
            f"Fashion-MNIST is not installed: {name}(.gz) is not under {self.root}; "
            f"{GET_FASHION}, or set data.datamodule.root to a folder holding the four IDX files."
        )

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        fix = f"{GET_FASHION} again, or set data.datamodule.root to a good copy"
        images_path, labels_path = self.files[split]
        images = read_idx(images_path, magic=IDX_IMAGES, fix=fix)
        labels = read_idx(labels_path, magic=IDX_LABELS, fix=fix)
        if images.shape[1:] != (28, 28):
            raise ConfigError(f"{images_path} holds images of shape {images.shape[1:]}, not 28x28; {fix}.")
        if len(images) != len(labels):
            raise ConfigError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; {fix}."
            )
        if len(labels) and labels.max() >= self.num_classes:
            raise ConfigError(f"{labels_path} has label {labels.max()}, outside 0-9; {fix}.")
        return images, labels.astype(np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        (train_x, train_y), (test_x, test_y) = self._read("train"), self._read("test")
        tr, va = holdout_split(train_y, val_size=self.val_size, data_seed=self.data_seed)
        x = torch.from_numpy(train_x).float().unsqueeze(1)
        mean, std = x[tr].mean(), x[tr].std()  # normalise with train statistics only
        x, y = (x - mean) / std, torch.from_numpy(train_y)
        test = TensorDataset(
            (torch.from_numpy(test_x).float().unsqueeze(1) - mean) / std, torch.from_numpy(test_y)
        )
        self._splits = {
            "train": TensorDataset(x[tr], y[tr]),
            "val": TensorDataset(x[va], y[va]) if len(va) else test,
            "test": test,
        }

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
