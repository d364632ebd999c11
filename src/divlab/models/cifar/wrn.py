"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR, as used by RepDistiller / CRD: wrn_<depth>_<widen>.

3x3 conv (16 channels, no BN) -> three stages of n pre-activation blocks (depth = 6n + 4) with
16k, 32k, 64k channels (stages 2 and 3 halve the resolution) -> BN -> ReLU -> global average pool -> linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

from divlab.models.cifar.common import global_pool, reference_init


class PreActBlock(nn.Module):
    """conv(relu(bn(conv(relu(bn(x)))))) + shortcut. When the shape changes the shortcut is a 1x1 conv that,
    as in the reference WRN, reads the pre-activated input relu(bn(x)) rather than x."""

    def __init__(
        self, c_in: int, c_out: int, *, stride: int = 1, drop: float = 0.0
    ):  # dropout between the two convs (0 in every KD recipe)
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop = drop
        reshape = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(a)))
        out = self.conv2(F.dropout(out, self.drop, self.training))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    feature_names = (
        "stage1",
        "stage2",
        "stage3",
        "pool",
    )  # block outputs (before the final BN) and pooled vector

    def __init__(
        self,
        *,
        depth: int,  # 6n + 4: 16, 40, ...
        widen: int,  # k: stage widths 16k, 32k, 64k
        num_classes: int,  # size of the logits
        drop: float = 0.0,
    ):  # dropout inside each block
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        for s in (1, 2, 3):
            blocks = [
                PreActBlock(
                    widths[s - 1] if i == 0 else widths[s],
                    widths[s],
                    stride=(1 if s == 1 else 2) if i == 0 else 1,
                    drop=drop,
                )
                for i in range(n)
            ]
            setattr(self, f"stage{s}", nn.Sequential(*blocks))
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[3]), nn.ReLU()
        )  # the last block's missing post-activation
        self.pool = global_pool()
        self.fc = nn.Linear(widths[3], num_classes)
        reference_init(self, linear_zero_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(self.head(x)))
