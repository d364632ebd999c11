"""The two U-Nets of EDM (Karras, Aittala, Aila & Laine 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Sec. 5 and Appendix F.2): the DDPM++ network of Song et al. 2021
("SongUNet", CIFAR-10 32x32) and the ADM network of Dhariwal & Nichol 2021 ("DhariwalUNet",
ImageNet 64x64), as raw networks F(x_in, c_noise, class_labels) for divlab.models.edm.EDMPrecond.

Written from the papers and from the structure of NVlabs/edm `training/networks.py` (read to keep
the module tree, and so the parameter names and shapes, equal to the official checkpoints';
divlab.models.edm_checkpoint loads them once converted to safetensors). Parameter counts of the
reference configurations (computed by instantiating the reference classes at NVlabs/edm commit
008a4e5 with the options of its train.py and README table):
    SongUNet,  CIFAR-10 conditional (label_dim 10, augment_dim 9):       55,735,299
    SongUNet,  CIFAR-10 unconditional (label_dim 0, augment_dim 9):      55,733,891
    DhariwalUNet, ImageNet-64 conditional (label_dim 1000, no augment): 295,899,267
Only the [1, 1] resampling filter of both configurations is supported: down = 2x2 average pooling,
up = nearest-neighbour doubling. Initialisation is PyTorch's default except the zero-initialised
last convolution of each residual and attention branch and of the output (so F starts near 0);
training from scratch is task=denoise's job, distillation starts from a teacher's weights.
`features` gives the pooled bottleneck (the encoder's output) for discriminator heads (`width`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.functional import dropout, scaled_dot_product_attention, silu

from divlab.errors import ConfigError

__all__ = ["SongUNet", "DhariwalUNet", "EDM_REFERENCE_PARAMS"]

EDM_REFERENCE_PARAMS = {
    "cifar10_cond": 55_735_299,
    "cifar10_uncond": 55_733_891,
    "imagenet64_cond": 295_899_267,
}  # see the module docstring


def group_norm(channels: int, eps: float) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (as both reference networks)."""
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels, eps=eps)


def positional_embedding(c_noise: Tensor, channels: int, *, endpoint: bool) -> tuple[Tensor, Tensor]:
    """Transformer sinusoids of c_noise at frequencies (1/10000)^(i/(channels/2 - endpoint)): (cos, sin)."""
    half = channels // 2
    i = torch.arange(half, dtype=torch.float32, device=c_noise.device)
    freqs = (1.0 / 10_000) ** (i / (half - (1 if endpoint else 0)))
    x = c_noise.float().reshape(-1, 1) * freqs
    return x.cos(), x.sin()


class Resample(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "down":
            return nn.functional.avg_pool2d(x, 2)
        return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


class Conv(nn.Module):
    """Optional 2x resampling, then a k x k convolution (k = 0: resampling only, no parameters)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, resample: str | None = None):
        super().__init__()
        self.resample = Resample(resample) if resample else None
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(c_out)) if kernel else None
        if kernel:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if self.resample is not None:
            x = self.resample(x)
        if self.weight is None:
            return x
        return nn.functional.conv2d(
            x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.weight.shape[-1] // 2
        )


def zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Block(nn.Module):
    """Residual block (norm, SiLU, conv; the embedding as a bias, or as scale and shift when `adaptive`;
    norm, SiLU, dropout, conv; skip), optionally followed by multi-head self-attention."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        emb: int,  # embedding width
        resample: str | None = None,  # down | up | None
        heads: int = 0,  # attention heads (0: no attention)
        dropout: float = 0.0,  # before the second convolution
        skip_scale: float = 1.0,  # multiplies the sum of each residual
        eps: float = 1e-5,  # GroupNorm eps
        resample_proj: bool = False,  # 1x1 projection on a resampled skip even if widths agree
        adaptive: bool = True,
    ):  # scale and shift from the embedding (ADM) vs a bias (DDPM++)
        super().__init__()
        self.in_channels, self.out_channels = c_in, c_out
        self.heads, self.p, self.skip_scale, self.adaptive = heads, dropout, skip_scale, adaptive
        self.norm0 = group_norm(c_in, eps)
        self.conv0 = Conv(c_in, c_out, 3, resample=resample)
        self.affine = nn.Linear(emb, c_out * (2 if adaptive else 1))
        self.norm1 = group_norm(c_out, eps)
        self.conv1 = zero_(Conv(c_out, c_out, 3))
        self.skip = None
        if c_out != c_in or resample:
            self.skip = Conv(c_in, c_out, 1 if resample_proj or c_out != c_in else 0, resample=resample)
        if heads:
            self.norm2 = group_norm(c_out, eps)
            self.qkv = Conv(c_out, 3 * c_out, 1)
            self.proj = zero_(Conv(c_out, c_out, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive:
            scale, shift = params.chunk(2, dim=1)
            h = silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(dropout(h, p=self.p, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.heads:
            b, c, hh, ww = h.shape
            # channel layout of qkv: [head, channel within head, (q, k, v)], as the reference checkpoints
            q, k, v = self.qkv(self.norm2(h)).reshape(b * self.heads, c // self.heads, 3, hh * ww).unbind(2)
            a = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            h = (self.proj(a.transpose(1, 2).reshape(b, c, hh, ww)) + h) * self.skip_scale
        return h


def check_labels(net: nn.Module, class_labels: Tensor | None, x: Tensor) -> Tensor | None:
    """(B, label_dim) float one-hot labels (integer class indices are one-hot encoded)."""
    if not net.label_dim:
        return None
    if class_labels is None:
        raise ConfigError(
            f"{type(net).__name__} is class-conditional (label_dim={net.label_dim}) but was called "
            f"without class labels; set the network's label_dim=0 or pass class_labels"
        )
    if class_labels.ndim == 1:
        class_labels = nn.functional.one_hot(class_labels.long(), net.label_dim)
    return class_labels.to(torch.float32).reshape(x.shape[0], net.label_dim)


class _UNet(nn.Module):
    """Encoder / decoder walk shared by both networks (ModuleDicts keyed '<res>x<res>_<name>')."""

    def _unet(self, x: Tensor, emb: Tensor) -> Tensor:
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, Block) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if not isinstance(block, Block):
                continue
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return x

    def _build(self, *, resolution, in_channels, model_channels, channel_mult, num_blocks, attention, block):
        self.enc, self.dec = nn.ModuleDict(), nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            res = resolution >> level
            if level == 0:
                c, c_prev = model_channels * (mult if self.first_conv_mult else 1), c
                self.enc[f"{res}x{res}_conv"] = Conv(c_prev, c, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(c, c, resample="down")
            for i in range(num_blocks):
                c_prev, c = c, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = block(c_prev, c, attn=res in attention)
        skips = [b.out_channels if isinstance(b, Block) else b.weight.shape[0] for b in self.enc.values()]
        self.width = c
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(c, c, attn=True)
                self.dec[f"{res}x{res}_in1"] = block(c, c)
            else:
                self.dec[f"{res}x{res}_up"] = block(c, c, resample="up")
            for i in range(num_blocks + 1):
                c_prev, c = c + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = block(
                    c_prev, c, attn=self.dec_attention(res, i, attention)
                )
        return c

    def features(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Pooled encoder output (width channels) at (x_in, c_noise)."""
        emb = self.embed(x, c_noise, class_labels)
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, Block) else block(x)
        return silu(x).mean((2, 3))


class SongUNet(_UNet):
    """DDPM++ (Song et al. 2021) in EDM's configuration: positional noise embedding, 'standard' encoder
    and decoder, [1, 1] resampling, attention at 16x16, one head, residuals scaled by sqrt(1/2)."""

    first_conv_mult = False

    def __init__(
        self,
        *,
        img_resolution: int = 32,  # input and output resolution
        in_channels: int = 3,  # image channels (out_channels equals it)
        label_dim: int = 0,  # classes; 0 = unconditional
        augment_dim: int = 0,  # augmentation-label width (EDM CIFAR-10: 9); 0 = none
        model_channels: int = 128,  # base width
        channel_mult: tuple = (2, 2, 2),  # width multiplier per resolution (EDM CIFAR-10)
        channel_mult_emb: int = 4,  # embedding width = model_channels x this
        num_blocks: int = 4,  # residual blocks per resolution
        attn_resolutions: tuple = (16,),  # resolutions with self-attention
        dropout: float = 0.13,
    ):  # EDM CIFAR-10 value
        super().__init__()
        self.label_dim, self.augment_dim, self.noise_channels = label_dim, augment_dim, model_channels
        emb = model_channels * channel_mult_emb
        self.map_label = nn.Linear(label_dim, model_channels) if label_dim else None
        self.map_augment = nn.Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb)
        self.map_layer1 = nn.Linear(emb, emb)

        def block(c_in, c_out, *, resample=None, attn=False):
            return Block(
                c_in,
                c_out,
                emb=emb,
                resample=resample,
                heads=1 if attn else 0,
                dropout=dropout,
                skip_scale=math.sqrt(0.5),
                eps=1e-6,
                resample_proj=True,
                adaptive=False,
            )

        self.num_blocks = num_blocks
        c = self._build(
            resolution=img_resolution,
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=list(channel_mult),
            num_blocks=num_blocks,
            attention=set(attn_resolutions),
            block=block,
        )
        self.dec[f"{img_resolution}x{img_resolution}_aux_norm"] = group_norm(c, 1e-6)
        self.dec[f"{img_resolution}x{img_resolution}_aux_conv"] = zero_(Conv(c, in_channels, 3))
        self._out = f"{img_resolution}x{img_resolution}_aux"

    def dec_attention(self, res: int, i: int, attention: set) -> bool:
        return i == self.num_blocks and res in attention  # the last block of a level only

    def embed(
        self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None
    ) -> Tensor:
        cos, sin = positional_embedding(c_noise, self.noise_channels, endpoint=True)
        emb = torch.cat([sin, cos], dim=1)  # DDPM++ order: sin first
        labels = check_labels(self, class_labels, x)
        if labels is not None:
            emb = emb + self.map_label(labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        h = self._unet(x, self.embed(x, c_noise, class_labels, augment_labels))
        return self.dec[f"{self._out}_conv"](silu(self.dec[f"{self._out}_norm"](h)))


class DhariwalUNet(_UNet):
    """ADM (Dhariwal & Nichol 2021) in EDM's ImageNet-64 configuration: positional noise embedding,
    adaptive GroupNorm (scale and shift), attention at 32, 16 and 8 with 64 channels per head."""

    first_conv_mult = True

    def __init__(
        self,
        *,
        img_resolution: int = 64,  # input and output resolution
        in_channels: int = 3,  # image channels (out_channels equals it)
        label_dim: int = 0,  # classes; 0 = unconditional (EDM ImageNet-64: 1000)
        augment_dim: int = 0,  # augmentation-label width; 0 = none (EDM ImageNet-64)
        model_channels: int = 192,  # base width
        channel_mult: tuple = (1, 2, 3, 4),  # width multiplier per resolution
        channel_mult_emb: int = 4,  # embedding width = model_channels x this
        num_blocks: int = 3,  # residual blocks per resolution
        attn_resolutions: tuple = (32, 16, 8),  # resolutions with self-attention
        channels_per_head: int = 64,  # attention heads = width / this
        dropout: float = 0.10,
    ):  # EDM ImageNet-64 value
        super().__init__()
        self.label_dim, self.augment_dim, self.noise_channels = label_dim, augment_dim, model_channels
        emb = model_channels * channel_mult_emb
        self.map_augment = zero_(nn.Linear(augment_dim, model_channels, bias=False)) if augment_dim else None
        self.map_layer0 = nn.Linear(model_channels, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        self.map_label = nn.Linear(label_dim, emb, bias=False) if label_dim else None

        def block(c_in, c_out, *, resample=None, attn=False):
            return Block(
                c_in,
                c_out,
                emb=emb,
                resample=resample,
                heads=c_out // channels_per_head if attn else 0,
                dropout=dropout,
                skip_scale=1.0,
                eps=1e-5,
                resample_proj=False,
                adaptive=True,
            )

        c = self._build(
            resolution=img_resolution,
            in_channels=in_channels,
            model_channels=model_channels,
            channel_mult=list(channel_mult),
            num_blocks=num_blocks,
            attention=set(attn_resolutions),
            block=block,
        )
        self.out_norm = group_norm(c, 1e-5)
        self.out_conv = zero_(Conv(c, in_channels, 3))

    def dec_attention(self, res: int, i: int, attention: set) -> bool:
        return res in attention

    def embed(
        self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None, augment_labels: Tensor | None = None
    ) -> Tensor:
        cos, sin = positional_embedding(c_noise, self.noise_channels, endpoint=False)
        emb = torch.cat([cos, sin], dim=1)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        labels = check_labels(self, class_labels, x)
        if labels is not None:
            emb = emb + self.map_label(labels)
        return silu(emb)

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        h = self._unet(x, self.embed(x, c_noise, class_labels, augment_labels))
        return self.out_conv(silu(self.out_norm(h)))
