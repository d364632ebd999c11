"""The small U-Net denoiser: shapes on 8x8 and 28x28 images, EDM wrapping, features, gradients."""

import pytest
import torch

from divlab.models.edm import EDMLoss, EDMPrecond
from divlab.models.unet_small import UNetSmall


@pytest.mark.parametrize("size", [8, 28])
def test_unet_denoiser_shapes_and_a_training_step(size):
    net = UNetSmall(channels=16, channel_mult=(1, 2))
    D = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(4, 1, size, size)
    sigma = torch.tensor([0.01, 0.5, 2.0, 80.0])
    out = D(x, sigma)
    assert out.shape == x.shape
    # zero-initialised output layer: D = c_skip x exactly at initialisation
    assert torch.allclose(out, (0.25 / (sigma**2 + 0.25))[:, None, None, None] * x)
    assert D.features(x, sigma).shape == (4, net.width)
    loss = EDMLoss(sigma_data=0.5)(D, x).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
