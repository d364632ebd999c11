"""An MLP denoiser for low-dimensional data (2-D toy sets), conditioned on the noise level through a
Fourier embedding of c_noise = ln(sigma)/4 (the embedding of Song et al. 2021 / EDM's NCSN++ setting,
random Gaussian frequencies fixed at construction).

`DenoiserMLP(x_in, c_noise) -> F` is the raw network; wrap it in `EDMPrecond` for D(x; sigma):

    D = EDMPrecond(DenoiserMLP(dim=2, width=128, depth=3), sigma_data=1.4)
"""

import math

import torch
from torch import Tensor, nn


class FourierEmbedding(nn.Module):
    """t -> [cos(2 pi f t), sin(2 pi f t)] with fixed frequencies f ~ N(0, scale^2)."""

    def __init__(
        self,
        *,
        channels: int,  # output size (even)
        scale: float = 16.0,  # std of the frequencies
        seed: int = 0,
    ):  # fixes the frequencies (part of the architecture)
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels // 2, generator=gen) * scale)

    def forward(self, t: Tensor) -> Tensor:
        arg = 2 * math.pi * t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class DenoiserMLP(nn.Module):
    """h_0 = W x + e(c_noise); h_{l+1} = h_l + Linear(SiLU(Linear(SiLU(h_l)) + E_l e)); F = W_out SiLU(h_L)."""

    def __init__(
        self,
        *,
        dim: int = 2,  # data dimension
        width: int = 128,  # hidden width
        depth: int = 3,  # residual blocks
        emb_channels: int = 64,  # Fourier embedding size
        emb_scale: float = 16.0,
    ):  # std of the Fourier frequencies
        super().__init__()
        self.dim, self.width = dim, width
        self.embed = nn.Sequential(
            FourierEmbedding(channels=emb_channels, scale=emb_scale),
            nn.Linear(emb_channels, width),
            nn.SiLU(),
            nn.Linear(width, width),
        )
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {"a": nn.Linear(width, width), "e": nn.Linear(width, width), "b": nn.Linear(width, width)}
            )
            for _ in range(depth)
        )
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)  # starts as D = c_skip x (the best guess at high noise)
        nn.init.zeros_(self.out.bias)

    def features(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """(B, width) last hidden state."""
        emb = self.embed(c_noise)
        h = self.inp(x) + emb
        for blk in self.blocks:
            h = h + blk["b"](nn.functional.silu(blk["a"](nn.functional.silu(h)) + blk["e"](emb)))
        return nn.functional.silu(h)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.out(self.features(x, c_noise))
