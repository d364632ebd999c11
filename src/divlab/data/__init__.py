from divlab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from divlab.data.digits import DigitsDataModule
from divlab.data.fashion_mnist import FashionMNISTDataModule
from divlab.data.image_folder import ImageFolderDataModule
from divlab.data.loaders import seeded_train_loader
from divlab.data.mnist5k import MNIST5kDataModule

__all__ = [
    "DigitsDataModule",
    "seeded_train_loader",
    "MNIST5kDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
]
