"""CIFAR ResNets (He et al. 2016, Sec. 4.2) as used by RepDistiller / CRD / mdistiller.

3x3 stem -> three stages of n post-activation basic blocks (depth = 6n + 2; stages 2 and 3 halve the
resolution) -> global average pool -> linear. `widths` are the (stem, stage1, stage2, stage3) channels:
(16, 16, 32, 64) for resnet8..resnet110, (32, 64, 128, 256) for resnet8x4 and resnet32x4.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from divlab.models.cifar.common import conv_bn, global_pool, reference_init


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a 1x1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride=stride)
        self.conv2 = conv_bn(c_out, c_out, relu=False)
        reshape = stride != 1 or c_in != c_out
        self.shortcut = (
            conv_bn(c_in, c_out, kernel=1, stride=stride, relu=False) if reshape else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *[BasicBlock(c_in if i == 0 else c_out, c_out, stride=stride if i == 0 else 1) for i in range(n)]
    )


class CifarResNet(nn.Module):
    feature_names = ("stage1", "stage2", "stage3", "pool")  # 32x32, 16x16, 8x8 maps; pooled vector

    def __init__(
        self,
        *,
        depth: int,  # 6n + 2: 8, 14, 20, 32, 44, 56, 110
        widths: Sequence[int],  # (stem, stage1, stage2, stage3) channels
        num_classes: int,  # size of the logits
        in_channels: int = 3,
    ):  # 1 for grey images (e.g. Fashion-MNIST)
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3) channels, got {tuple(widths)}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.stem = conv_bn(in_channels, widths[0])
        self.stage1 = _stage(widths[0], widths[1], n, stride=1)
        self.stage2 = _stage(widths[1], widths[2], n, stride=2)
        self.stage3 = _stage(widths[2], widths[3], n, stride=2)
        self.pool = global_pool()
        self.fc = nn.Linear(widths[3], num_classes)
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(self.stem(x))))))
