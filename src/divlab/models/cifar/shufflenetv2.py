"""ShuffleNet V2 (Ma et al. 2018) for CIFAR, as used by RepDistiller / CRD (`ShuffleV2`: net size 1x).

1x1 stem to 24 channels -> three stages, each a stride-2 down unit then split units -> 1x1 conv to 1024 ->
average pool -> linear. On 32x32 inputs the stages run at 16, 8 and 4 pixels.
"""

import torch
from torch import nn

from divlab.models.cifar.common import channel_shuffle, conv_bn, global_pool


class SplitUnit(nn.Module):
    """Keep half the channels, transform the other half (1x1, 3x3 depthwise, 1x1), concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, kernel=1),
            conv_bn(half, half, groups=half, relu=False),
            conv_bn(half, half, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches on the full input, each giving c_out / 2 channels; concatenate, shuffle."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.left = nn.Sequential(
            conv_bn(c_in, c_in, stride=2, groups=c_in, relu=False), conv_bn(c_in, mid, kernel=1)
        )
        self.right = nn.Sequential(
            conv_bn(c_in, mid, kernel=1),
            conv_bn(mid, mid, stride=2, groups=mid, relu=False),
            conv_bn(mid, mid, kernel=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    feature_names = ("stage1", "stage2", "stage3", "pool")  # unit outputs; pooled 1024-vector

    def __init__(
        self,
        *,
        num_classes: int,  # size of the logits
        widths: tuple = (116, 232, 464, 1024),  # stage1..3 channels and the last 1x1 conv (1x size)
        depths: tuple = (3, 7, 3),
    ):  # split units per stage, after its down unit
        super().__init__()
        self.num_classes = num_classes
        c_in = 24
        self.stem = conv_bn(3, c_in, kernel=1)
        for s, (c_out, n) in enumerate(zip(widths[:3], depths), start=1):
            setattr(
                self, f"stage{s}", nn.Sequential(DownUnit(c_in, c_out), *[SplitUnit(c_out) for _ in range(n)])
            )
            c_in = c_out
        self.head = conv_bn(c_in, widths[3], kernel=1)
        self.pool = global_pool()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(self.head(x)))
