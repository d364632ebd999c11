"""MobileNetV2 (Sandler et al. 2018) for CIFAR, as used by RepDistiller / CRD (`MobileNetV2` = width 0.5).

Stride-2 3x3 stem -> inverted residual blocks (1x1 expand, 3x3 depthwise, linear 1x1 project; the expand
conv is kept even at expansion 1) with the CIFAR strides below -> 1x1 conv to 1280 -> average pool -> linear.
On 32x32 inputs the four stages run at 16, 8, 4 and 2 pixels.
"""

import torch
from torch import nn

from divlab.models.cifar.common import conv_bn, global_pool, reference_init

# (expansion or None for `expand_ratio`, channels at width 1, blocks, first stride); rows grouped into stages
STAGES = (
    ((1, 16, 1, 1), (None, 24, 2, 1)),  # stage1: 16x16
    ((None, 32, 3, 2),),  # stage2: 8x8
    ((None, 64, 4, 2), (None, 96, 3, 1)),  # stage3: 4x4
    ((None, 160, 3, 2), (None, 320, 1, 1)),  # stage4: 2x2
)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            conv_bn(c_in, hidden, kernel=1),
            conv_bn(hidden, hidden, stride=stride, groups=hidden),
            conv_bn(hidden, c_out, kernel=1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    feature_names = ("stage1", "stage2", "stage3", "stage4", "pool")  # block outputs; pooled 1280-vector

    def __init__(
        self,
        *,
        num_classes: int,  # size of the logits
        width_mult: float = 0.5,  # channel multiplier; 0.5 is the KD benchmarks' "MobileNetV2"
        expand_ratio: int = 6,
    ):  # T, the expansion of every row but the first
        super().__init__()
        self.num_classes = num_classes
        c_in = int(32 * width_mult)
        self.stem = conv_bn(3, c_in, stride=2)
        for s, rows in enumerate(STAGES, start=1):
            blocks = []
            for t, c, n, first_stride in rows:
                c_out = int(c * width_mult)
                for i in range(n):
                    blocks.append(
                        InvertedResidual(
                            c_in,
                            c_out,
                            stride=first_stride if i == 0 else 1,
                            expand=expand_ratio if t is None else t,
                        )
                    )
                    c_in = c_out
            setattr(self, f"stage{s}", nn.Sequential(*blocks))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = conv_bn(c_in, last, kernel=1)
        self.pool = global_pool()
        self.fc = nn.Linear(last, num_classes)
        reference_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))
        return self.fc(self.pool(self.head(x)))
