"""Pieces shared by the CIFAR families: conv+BN, the `pool` feature, channel shuffle, reference init."""

import torch
from torch import nn


def conv_bn(
    c_in: int,
    c_out: int,
    *,
    kernel: int = 3,  # square kernel; padding keeps the size at stride 1
    stride: int = 1,
    groups: int = 1,  # c_in for a depthwise conv
    relu: bool = True,  # False for a linear (pre-sum) output
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm [-> ReLU]. ReLU is never in place, so a hooked BN output stays pre-activation."""
    layers = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def global_pool() -> nn.Sequential:
    """(B, C, H, W) -> (B, C): the `pool` feature of every zoo model, i.e. the input of `fc`."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (B, g*c, H, W) viewed as (B, g, c) and transposed to (B, c, g)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@torch.no_grad()
def reference_init(
    model: nn.Module,
    *,
    linear_std: float | None = None,  # N(0, std) Linear weights (VGG, MobileNetV2); None: PyTorch default
    linear_zero_bias: bool = False,  # zero Linear biases (implied by linear_std)
) -> None:
    """The initialisation of the reference CIFAR code: He-normal convs (fan_out, i.e. N(0, 2 / (k*k*c_out))),
    zero conv biases, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if linear_std is not None or linear_zero_bias:
                nn.init.zeros_(m.bias)
