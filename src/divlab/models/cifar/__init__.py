"""The CIFAR models of the KD benchmarks (RepDistiller / CRD / mdistiller), one small file per family.

Every model maps (B, 3, 32, 32) images to (B, num_classes) logits, has `num_classes` and `feature_names`
attributes, and named submodules [`stem`], `stage1`..`stageN`, [`head`], `pool` and `fc`. Build them by name
with `divlab.models.zoo.build_model`.
"""

from divlab.models.cifar.mobilenetv2 import MobileNetV2
from divlab.models.cifar.resnet import CifarResNet
from divlab.models.cifar.shufflenetv1 import ShuffleNetV1
from divlab.models.cifar.shufflenetv2 import ShuffleNetV2
from divlab.models.cifar.vgg import VGG
from divlab.models.cifar.wrn import WideResNet

__all__ = ["VGG", "CifarResNet", "MobileNetV2", "ShuffleNetV1", "ShuffleNetV2", "WideResNet"]
