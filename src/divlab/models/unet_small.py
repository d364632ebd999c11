"""A small U-Net denoiser for 8x8 digits and 28x28 MNIST (raw network F(x_in, c_noise); wrap it in
EDMPrecond). Two resolutions by default (8 -> 4, or 28 -> 14), residual blocks with GroupNorm and
SiLU, the noise level added to every block through a Fourier embedding (as in DDPM++/EDM, much
smaller). `features` gives the pooled bottleneck for discriminator heads (`width` = its size).
"""

import torch
from torch import Tensor, nn

from divlab.models.denoiser_mlp import FourierEmbedding


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.n1, self.c1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.e = nn.Linear(emb, c_out)
        self.n2, self.c2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.c1(nn.functional.silu(self.n1(x))) + self.e(emb)[:, :, None, None]
        h = self.c2(nn.functional.silu(self.n2(h)))
        return self.skip(x) + h


class UNetSmall(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int = 1,  # image channels
        channels: int = 32,  # width at full resolution
        channel_mult: tuple = (
            1,
            2,
        ),  # width multipliers per resolution (one downsampling each after the first)
        emb_channels: int = 64,
    ):  # Fourier embedding size of c_noise
        super().__init__()
        mult = list(channel_mult)
        self.embed = nn.Sequential(
            FourierEmbedding(channels=emb_channels),
            nn.Linear(emb_channels, 4 * channels),
            nn.SiLU(),
            nn.Linear(4 * channels, 4 * channels),
        )
        emb = 4 * channels
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in mult]
        self.down = nn.ModuleList()
        c = channels
        for w in widths:
            self.down.append(ResBlock(c, w, emb))
            c = w
        self.mid = ResBlock(c, c, emb)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(c + w, w, emb))
            c = w
        self.out_norm, self.out = norm(c), nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.width = widths[-1]

    def _trunk(self, x: Tensor, c_noise: Tensor):
        emb = self.embed(c_noise)
        h = self.inp(x)
        skips = []
        for i, blk in enumerate(self.down):
            if i > 0:
                h = nn.functional.avg_pool2d(h, 2)
            h = blk(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        return h, skips, emb

    def features(self, x: Tensor, c_noise: Tensor) -> Tensor:
        h, _, _ = self._trunk(x, c_noise)
        return nn.functional.silu(h).mean((2, 3))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        h, skips, emb = self._trunk(x, c_noise)
        for blk in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = blk(torch.cat([h, skip], dim=1), emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
