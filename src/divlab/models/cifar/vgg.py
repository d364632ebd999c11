"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman 2015), as used by RepDistiller / CRD: vgg8/11/13/16/19.

Five stages of 3x3 conv (with bias) -> BN -> ReLU; 2x2 max pooling before stages 2, 3 and 4 (the reference
pools before stage 5 only for 64x64 inputs, so on 32x32 inputs stage 5 runs at 4x4) -> global average
pool -> one linear layer (no FC stack).
"""

import torch
from torch import nn

from divlab.models.cifar.common import global_pool, reference_init

# conv widths per stage; vgg8 is RepDistiller's configuration "S"
VGG_STAGES = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    feature_names = (
        "stage1",
        "stage2",
        "stage3",
        "stage4",
        "stage5",
        "pool",
    )  # post-ReLU maps; pooled vector

    def __init__(
        self,
        *,
        depth: int,  # 8, 11, 13, 16 or 19
        num_classes: int,
    ):  # size of the logits
        super().__init__()
        if depth not in VGG_STAGES:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_STAGES)}, got {depth}")
        self.num_classes = num_classes
        c_in = 3
        for s, widths in enumerate(VGG_STAGES[depth], start=1):
            layers = [nn.MaxPool2d(2)] if s in (2, 3, 4) else []
            for c in widths:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            setattr(self, f"stage{s}", nn.Sequential(*layers))
        self.pool = global_pool()
        self.fc = nn.Linear(c_in, num_classes)
        reference_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage5(self.stage4(self.stage3(self.stage2(self.stage1(x)))))
        return self.fc(self.pool(x))
