"""CIFAR-10 and CIFAR-100 through torchvision's own dataset classes.

Train images get the standard augmentation of the KD literature (RandomCrop(32, padding=4) and a
horizontal flip), every split the usual per-channel normalisation. Validation: `val_size=0` (the
default) validates on the test set, as mdistiller and RepDistiller do (they report the best test
epoch); `val_size=N` holds out N training images, stratified by a data seed, seen without
augmentation. Nothing is downloaded unless `download=true`; the download runs in `prepare_data`
(rank 0 only under DDP).

`normalize=edm` maps pixels to [-1, 1] instead (EDM, Karras et al. 2022: sigma_data = 0.5), the scale of the
EDM teachers of the one-step recipes (conf/experiment/onestep/cifar10/); `points(split)` and `labels(split)`
give a whole split as tensors (the reference set of the one-step sample metrics).

`check_integrity=false` skips torchvision's md5 check of each file (the files must still exist): for
files written in the CIFAR format by tests or converted by hand, from a source you trust. CIFAR batches
are pickles; they are read with a restricted unpickler (`safe_unpickle`) that admits only what the format
holds (dicts, lists, strings, bytes, numbers and numpy arrays), so a crafted file runs no code even then:
it fails in one sentence naming the file. Any new loader of a pickle-based format follows the same rule.
"""

import pickle
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import check_integrity

from divlab.data.fashion_mnist import check_val_size, holdout_split
from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError


class TransformedSubset(Dataset):
    """`dataset[indices[i]]` with `transform` applied to the image: one loaded data set, two views."""

    def __init__(self, dataset: Dataset, indices, transform):
        self.dataset, self.indices, self.transform = dataset, np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.dataset[int(self.indices[i])]
        return self.transform(image), label


# The only globals a CIFAR batch refers to: numpy's array reconstruction (numpy 1 and 2 module names), and
# _codecs.encode, with which pickle protocol 2 writes bytes (a string -> bytes conversion, nothing else).
PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _CIFARUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"the file refers to {module}.{name}, which a CIFAR batch never holds"
            )
        return super().find_class(module, name)


def safe_unpickle(path: Path):
    """A CIFAR batch (a pickled dict of lists, bytes and numpy arrays), read without running any code."""
    with open(path, "rb") as f:
        try:
            return _CIFARUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from None


class SafeLoading:
    """Mixin over torchvision's CIFAR10/CIFAR100: the same files and attributes, read by safe_unpickle."""

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted.")
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = safe_unpickle(Path(self.root) / self.base_folder / name)
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
        self._load_meta()

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if not check_integrity(str(path), self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted.")
        self.classes = safe_unpickle(path)[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def safe(cls: type[CIFAR10], *, md5: bool) -> type[CIFAR10]:
    """`cls` read by safe_unpickle; md5=False also drops the md5 sums: files must exist, their contents
    are not hashed."""
    lists = (
        {}
        if md5
        else {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        }
    )
    return type(f"{'Safe' if md5 else 'Unchecked'}{cls.__name__}", (SafeLoading, cls), lists)


# Module-level names equal to the class names, so that spawned loader workers can unpickle them.
SafeCIFAR10, SafeCIFAR100 = safe(CIFAR10, md5=True), safe(CIFAR100, md5=True)
UncheckedCIFAR10, UncheckedCIFAR100 = safe(CIFAR10, md5=False), safe(CIFAR100, md5=False)
CHECKED = {CIFAR10: SafeCIFAR10, CIFAR100: SafeCIFAR100}
UNCHECKED = {CIFAR10: UncheckedCIFAR10, CIFAR100: UncheckedCIFAR100}


# data.datamodule.normalize: (mean, std) of torchvision's Normalize; None = the data set's channel statistics
NORMALIZE = {"channel_stats": None, "edm": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


class CIFARDataModule(pl.LightningDataModule):
    """Shared body of CIFAR10DataModule and CIFAR100DataModule (which set the class attributes)."""

    dataset_class: type[CIFAR10] = CIFAR10
    title, num_classes, approx_mb = "CIFAR-10", 10, 160
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
    mixture = None  # not a Gaussian mixture (the one-step tasks' mode metrics do not apply)

    def __init__(
        self,
        *,
        root: str = "data",  # folder holding cifar-10-batches-py/ or cifar-100-python/
        download: bool = False,  # true: download into root when the files are not there
        check_integrity: bool = True,  # false: skip torchvision's md5 check (hand-made files)
        augment: bool = True,  # train: RandomCrop(32, padding=4) + horizontal flip
        normalize: str = "channel_stats",  # channel_stats: per-channel mean/std (KD) | edm: [-1, 1]
        val_size: int = 0,  # train images held out for validation; 0: validate on test
        data_seed: int = 0,  # fixes the hold-out (not the batch order)
        batch_size: int = 64,  # per process
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
    ):
        super().__init__()
        self.root, self.download, self.check_integrity = Path(root), download, check_integrity
        self.augmented, self.val_size, self.data_seed = augment, check_val_size(val_size), data_seed
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.input_shape = (3, 32, 32)
        self.folder = self.root / self.dataset_class.base_folder
        if not download and not self.folder.is_dir():
            raise ConfigError(self._missing("no such folder"))
        if normalize not in NORMALIZE:
            raise ConfigError(
                f"data.datamodule.normalize must be one of {sorted(NORMALIZE)}, got {normalize!r}"
            )
        if NORMALIZE[normalize] is not None:  # instance values, so task=evaluate undoes the right ones
            self.mean, self.std = NORMALIZE[normalize]
        self.normalize = T.Normalize(self.mean, self.std)
        normalise = [T.ToTensor(), self.normalize]
        self.eval_transform = T.Compose(normalise)
        self.train_transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalise] if augment else normalise
        )
        self._splits = None

    def _missing(self, problem: str) -> str:
        return (
            f"{self.title} not found under {self.folder} ({problem}): set data.datamodule.root to the "
            f"folder that holds {self.dataset_class.base_folder}/, or data.datamodule.download=true to "
            f"download it (about {self.approx_mb} MB)."
        )

    def _dataset(self, *, train: bool, download: bool = False):
        cls = (CHECKED if self.check_integrity else UNCHECKED)[self.dataset_class]
        try:
            return cls(str(self.root), train=train, download=download)
        except (RuntimeError, OSError) as err:  # torchvision's "not found or corrupted", or no network
            if download:
                raise ConfigError(
                    f"Downloading {self.title} into {self.root} failed ({err}); download "
                    f"{self.dataset_class.url} by hand and unpack it there."
                ) from None
            if isinstance(err, RuntimeError):
                problem = (
                    "a file is missing or fails its md5 check"
                    if self.check_integrity
                    else "a file is missing"
                )
                raise ConfigError(self._missing(problem)) from None
            raise ConfigError(
                f"{self.title} files under {self.folder} cannot be read ({err}); point "
                f"data.datamodule.root at a good copy."
            ) from None
        except (
            EOFError,
            pickle.UnpicklingError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
        ) as err:  # a damaged, hand-made or crafted file
            raise ConfigError(
                f"{self.title} files under {self.folder} cannot be read ({type(err).__name__}: "
                f"{err}); delete them and set data.datamodule.download=true, or point "
                f"data.datamodule.root at a good copy."
            ) from None

    def prepare_data(self) -> None:
        if self.download:
            self._dataset(train=True, download=True)
            self._dataset(train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        if self.download and self.trainer is None:  # used outside a Trainer, which calls prepare_data itself
            self.prepare_data()
        train, test = self._dataset(train=True), self._dataset(train=False)
        if (found := len(train.classes)) != self.num_classes:
            raise ConfigError(
                f"{self.folder} has {found} classes where {self.title} has {self.num_classes}; "
                f"point data.datamodule.root at a {self.title} copy."
            )
        tr, va = holdout_split(np.asarray(train.targets), val_size=self.val_size, data_seed=self.data_seed)
        test_view = TransformedSubset(test, np.arange(len(test)), self.eval_transform)
        self.classes = list(train.classes)
        self._splits = {
            "train": TransformedSubset(train, tr, self.train_transform),
            "val": TransformedSubset(train, va, self.eval_transform) if len(va) else test_view,
            "test": test_view,
        }

    def points(self, split: str) -> torch.Tensor:
        """All images of a split, (n, 3, 32, 32), normalised as the loaders' (never augmented)."""
        self.setup()
        view = self._splits[split]
        pixels = torch.from_numpy(view.dataset.data[view.indices]).permute(0, 3, 1, 2)
        return self.normalize(pixels.float() / 255.0)

    def labels(self, split: str) -> torch.Tensor:
        self.setup()
        view = self._splits[split]
        return torch.as_tensor(np.asarray(view.dataset.targets)[view.indices], dtype=torch.long)

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10 (50k train, 10k test, 32x32 RGB, 10 classes)."""


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100 (50k train, 10k test, 32x32 RGB, 100 fine classes); mean/std as in RepDistiller/mdistiller."""

    dataset_class = CIFAR100
    title, num_classes, approx_mb = "CIFAR-100", 100, 160
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)
