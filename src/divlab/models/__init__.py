from divlab.models.mlp import MLP
from divlab.models.small_cnn import SmallCNN

__all__ = ["MLP", "SmallCNN"]
