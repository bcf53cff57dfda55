"""Convolutional encoder and decoder of the Infinity tokenizer (a FLUX-style VQGAN without attention).

Shapes: B batch, C channels, H/W pixel grid, h/w latent grid, d bits (latent channels).

    encoder: image (B, 3, H, W) in [-1, 1]  ->  features (B, d, H/p, W/p), p = patch_size
    decoder: features (B, d, h, w)          ->  image (B, 3, h*p, w*p), unclamped

Each of the L levels has `num_res_blocks` ResNet blocks (decoder: one more); the first log2(p) encoder
levels end with a stride-2 downsample, and the decoder mirrors them with nearest x2 upsamples. The mid
block has no attention (as released).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TokenizerConfig


def group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups, or 24 where the width is not a multiple of 32 (the official rule).
    groups = 32 if channels % 32 == 0 else 24
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x_BCHW) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        # Pad one zero row/column at the bottom/right only, then an unpadded stride-2 conv: H -> H/2 exactly.
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


def _phase_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of a 3-tap kernel after a nearest x2 upsample: even outputs read input cells (i-1, i) with
    taps (w0, w1 + w2), odd outputs read (i, i+1) with taps (w0 + w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (padding 1), computed without making the x2 image.

    Each output pixel of the upsampled grid reads only 2x2 distinct input cells, so the conv splits into four
    2x2 convs of the input, one per output phase (row parity a, column parity b), whose taps are sums of the 3x3
    taps that land on the same cell; the phases are then interleaved. The same sums in another order (equal to
    fp32 rounding), for 16 instead of 36 multiply-adds per input cell and channel pair: this is the VAE decoder's
    largest saving at 256x256 (a quarter of its FLOPs are these convs).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        H, W = x_BCHW.shape[-2:]
        padded = F.pad(x_BCHW, (1, 1, 1, 1))  # the x2 image's zero border is this one's
        phases = []
        for a, rows_w in enumerate(_phase_taps(self.conv.weight, 2)):  # (C, C, 2, 3) per row phase
            for b, w_CC22 in enumerate(_phase_taps(rows_w, 3)):
                phases.append(F.conv2d(padded[..., a : a + H + 1, b : b + W + 1], w_CC22, self.conv.bias))
        y_BC4HW = torch.stack(phases, dim=2)  # phase a*2 + b
        return F.pixel_shuffle(y_BC4HW.flatten(1, 2), 2)  # (B, C, 2H, 2W): phase (a, b) -> pixel (2i+a, 2j+b)


class Level(nn.Module):
    """ResNet blocks at one resolution, then optionally a stride-2 "down" or nearest x2 "up" conv."""

    def __init__(self, c_in: int, c_out: int, num_blocks: int, resample: str | None = None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(num_blocks))
        self.downsample = Downsample(c_out) if resample == "down" else None
        self.upsample = Upsample(c_out) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        c_in = cfg.base_channels
        for i, c_out in enumerate(widths):
            resample = "down" if i < cfg.num_downsamples else None
            self.down.append(Level(c_in, c_out, cfg.num_res_blocks, resample))
            c_in = c_out
        self.mid = Mid(c_in)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.bits, 3, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(img_B3HW)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, d, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        c_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.bits, c_in, 3, padding=1)
        self.mid = Mid(c_in)
        # up[i] mirrors encoder level i; levels run from the last (coarsest) to up[0]. Levels 1..log2(p)
        # end with an x2 upsample, so the finest level runs at full resolution.
        levels: list[Level] = []
        for i in reversed(range(len(widths))):
            resample = "up" if 1 <= i <= cfg.num_downsamples else None
            levels.insert(0, Level(c_in, widths[i], cfg.num_res_blocks + 1, resample))
            c_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, padding=1)

    def forward(self, f_BdHW: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(f_BdHW))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, 3, H, W)
