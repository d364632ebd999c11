from divlab.data.digits import DigitsDataModule
from divlab.data.loaders import seeded_train_loader

__all__ = ["DigitsDataModule", "seeded_train_loader"]
