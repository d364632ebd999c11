"""A multi-layer perceptron on flattened images."""

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(
        self,
        *,
        input_shape: list[int],  # e.g. [1, 8, 8]; flattened inside
        num_classes: int,  # size of the logits
        hidden: list[int],  # widths of the hidden layers
        dropout: float = 0.0,
    ):  # after each hidden ReLU
        super().__init__()
        self.num_classes = num_classes
        dims = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
