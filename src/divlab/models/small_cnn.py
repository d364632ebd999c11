"""A three-block CNN for small images (8x8 digits, 28x28 MNIST)."""

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,  # 1 for grey images
        num_classes: int,  # size of the logits
        width: int = 32,
    ):  # channels of the first block; doubled twice
        super().__init__()
        self.num_classes = num_classes
        self.stage1 = conv_bn_relu(in_channels, width)
        self.stage2 = nn.Sequential(conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))
        self.stage3 = conv_bn_relu(2 * width, 4 * width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(x)))))
