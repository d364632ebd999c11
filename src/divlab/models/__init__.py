from divlab.models.features import FeatureTaps
from divlab.models.gpt import GPT, KVCache
from divlab.models.mlp import MLP
from divlab.models.small_cnn import SmallCNN
from divlab.models.zoo import build_model, zoo_names

__all__ = ["GPT", "MLP", "FeatureTaps", "KVCache", "SmallCNN", "build_model", "zoo_names"]
