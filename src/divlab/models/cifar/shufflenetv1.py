"""ShuffleNet V1 (Zhang et al. 2018) for CIFAR, as used by RepDistiller / CRD (`ShuffleV1`: g = 3).

1x1 stem to 24 channels -> three stages of shuffle units (the first of each has stride 2 and concatenates
an average-pooled shortcut) -> average pool -> linear. On 32x32 inputs the stages run at 16, 8 and 4 pixels.
"""

import torch
import torch.nn.functional as F
from torch import nn

from divlab.models.cifar.common import channel_shuffle, conv_bn, global_pool


class ShuffleUnit(nn.Module):
    """1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv, then relu(branch + x) or, at stride 2,
    relu(cat(branch, avgpool(x))) so the unit outputs c_out channels either way."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        stride: int,
        groups: int,  # groups of both 1x1 convs
        first_groups: int,
    ):  # groups of the first 1x1 conv (1 on the 24-channel stem output)
        super().__init__()
        branch = c_out - c_in if stride == 2 else c_out
        mid = branch // 4
        self.stride, self.first_groups = stride, first_groups
        self.conv1 = conv_bn(c_in, mid, kernel=1, groups=first_groups)
        self.conv2 = conv_bn(mid, mid, stride=stride, groups=mid)
        self.conv3 = conv_bn(mid, branch, kernel=1, groups=groups, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(channel_shuffle(self.conv1(x), self.first_groups)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    feature_names = ("stage1", "stage2", "stage3", "pool")  # unit outputs; pooled vector

    def __init__(
        self,
        *,
        num_classes: int,  # size of the logits
        widths: tuple = (240, 480, 960),  # stage output channels (g = 3)
        depths: tuple = (4, 8, 4),  # units per stage
        groups: int = 3,
    ):  # g
        super().__init__()
        self.num_classes = num_classes
        c_in = 24
        self.stem = conv_bn(3, c_in, kernel=1)
        for s, (c_out, n) in enumerate(zip(widths, depths), start=1):
            units = [
                ShuffleUnit(
                    c_in if i == 0 else c_out,
                    c_out,
                    stride=2 if i == 0 else 1,
                    groups=groups,
                    first_groups=1 if (s, i) == (1, 0) else groups,
                )
                for i in range(n)
            ]
            setattr(self, f"stage{s}", nn.Sequential(*units))
            c_in = c_out
        self.pool = global_pool()
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(self.stem(x))))))
