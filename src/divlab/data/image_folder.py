"""Custom labelled images: torchvision's ImageFolder over root/train, root/val and root/test.

Layout: `root/train/<class>/<image>`, `root/val/<class>/<image>`, and optionally
`root/test/<class>/<image>` (without it, the test set is the val set). The classes are the folder
names under root/train, in sorted order; val and test use the same class indices even when they
lack some classes. Images are read as RGB, so input_shape is (3, image_size, image_size).
"""

from pathlib import Path

import lightning.pytorch as pl
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from divlab.data.loaders import test_split_loader, train_split_loader, val_split_loader
from divlab.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FixedClassesImageFolder(ImageFolder):
    """ImageFolder whose class list is given (the train set's), not read from its own folder."""

    def __init__(self, root: str, *, classes: list[str], **kwargs):
        self._given_classes = list(classes)
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory):
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}


class ImageFolderDataModule(pl.LightningDataModule):
    """Class-per-folder images; train augmentation is RandomResizedCrop + horizontal flip."""

    def __init__(
        self,
        *,
        root: str | None = None,  # folder with train/<class>/, val/<class>/ and maybe test/
        num_classes: int | None = None,  # if set, must equal the number of class folders in train/
        image_size: int = 224,  # side of the square the model sees
        resize_size: int | None = None,  # eval: short side to this, then centre crop; None: size/0.875
        augment: bool = True,  # train: RandomResizedCrop + flip; false: the eval transform
        mean: tuple[float, ...] = IMAGENET_MEAN,  # per-channel normalisation
        std: tuple[float, ...] = IMAGENET_STD,
        batch_size: int = 64,  # per process
        seed: int = 0,  # fixes the batch order (per epoch)
        num_workers: int = 0,
    ):
        super().__init__()
        how = "set data.datamodule.root to a folder holding train/<class>/<images> and val/<class>/<images>"
        if root is None or not Path(root, "train").is_dir() or not Path(root, "val").is_dir():
            raise ConfigError(f"No image folder data at {root}: {how}.")
        self.root = Path(root)
        try:
            self.classes, _ = find_classes(self.root / "train")
        except FileNotFoundError:
            raise ConfigError(f"{self.root / 'train'} has no class folders: {how}.") from None
        self.splits = {
            "train": self.root / "train",
            "val": self.root / "val",
            "test": self.root / ("test" if (self.root / "test").is_dir() else "val"),
        }
        for split in ("val", "test"):
            extra = sorted(
                set(p.name for p in self.splits[split].iterdir() if p.is_dir()) - set(self.classes)
            )
            if extra:
                raise ConfigError(
                    f"{self.splits[split]} has class folders {extra} that "
                    f"{self.root / 'train'} lacks; every class must have training images."
                )
        if num_classes is not None and num_classes != len(self.classes):
            raise ConfigError(
                f"data.num_classes is {num_classes} but {self.root / 'train'} has "
                f"{len(self.classes)} class folders; set data.num_classes={len(self.classes)}."
            )
        if image_size < 1:
            raise ConfigError(f"data.datamodule.image_size must be >= 1, got {image_size}")
        self.num_classes, self.input_shape, self.augmented = (
            len(self.classes),
            (3, image_size, image_size),
            augment,
        )
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        resize_size = resize_size if resize_size is not None else round(image_size / 0.875)
        normalise = [T.ToTensor(), T.Normalize(tuple(map(float, mean)), tuple(map(float, std)))]
        self.eval_transform = T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), *normalise])
        self.train_transform = (
            T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalise])
            if augment
            else self.eval_transform
        )
        self._splits = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        self._splits = {}
        for split, folder in self.splits.items():
            transform = self.train_transform if split == "train" else self.eval_transform
            dataset = FixedClassesImageFolder(str(folder), classes=self.classes, transform=transform)
            if split == "train" and (
                empty := sorted(set(self.classes) - {self.classes[t] for t in dataset.targets})
            ):
                raise ConfigError(
                    f"{folder} has class folders without images {empty}; every class needs "
                    f"training images (.png, .jpg, ...)."
                )
            if len(dataset) == 0:
                raise ConfigError(
                    f"{folder} holds no images with a known extension (.png, .jpg, ...); "
                    f"set data.datamodule.root to a folder with images in train/<class>/ and "
                    f"val/<class>/."
                )
            self._splits[split] = dataset

    train_dataloader = train_split_loader
    val_dataloader = val_split_loader
    test_dataloader = test_split_loader
