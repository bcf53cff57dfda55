"""BitwiseTokenizer: encoder + multi-scale bitwise quantizer + decoder.

Legend: B batch, d bits per token, H/W full latent grid, h/w one scale's grid, K scales.
Images are float (B, 3, H*p, W*p) in [-1, 1], RGB; p = patch_size.

    f = tok.encode(img)                        # (B, d, H, W) raw features
    codes = tok.quantize(f, schedule.scales)   # bits per scale, F_k, teacher-forcing inputs
    img = tok.decode(codes.quantized)          # (B, 3, H*p, W*p) clamped to [-1, 1]
    img = tok.decode_bits(codes.bits)          # the same image, from the bits alone
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import TokenizerConfig
from .quantizer import FlipSource, Grid, MultiScaleCodes, MultiScaleQuantizer, next_scale_input
from .vae import Decoder, Encoder


class BitwiseTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = MultiScaleQuantizer(config.bits, config.quantizer)

    @property
    def bits(self) -> int:
        return self.config.bits

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Raw (unquantized) features (B, d, H, W)."""
        p = self.config.patch_size
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images (B, {self.config.in_channels}, H, W), got {tuple(img_B3HW.shape)}")
        if img_B3HW.shape[-2] % p or img_B3HW.shape[-1] % p:
            raise ValueError(f"image size {tuple(img_B3HW.shape[-2:])} must be a multiple of the patch size {p}")
        return self.encoder(img_B3HW)

    def quantize(
        self, f_BdHW: torch.Tensor, scales: Sequence[Grid], flips: FlipSource | None = None, with_losses: bool = False
    ) -> MultiScaleCodes:
        """Multi-scale residual quantization of features (Algorithm 1; with `flips`, Algorithm 4)."""
        return self.quantizer(f_BdHW, scales, flips=flips, with_losses=with_losses)

    def encode_scales(self, img_B3HW: torch.Tensor, scales: Sequence[Grid], flips: FlipSource | None = None) -> MultiScaleCodes:
        return self.quantize(self.encode(img_B3HW), scales, flips=flips)

    def decode(self, f_BdHW: torch.Tensor) -> torch.Tensor:
        """Features (B, d, H, W) -> image (B, 3, H*p, W*p) clamped to [-1, 1]."""
        return self.decoder(f_BdHW).clamp(-1, 1)

    def cumulative_from_bits(self, bits: Sequence[torch.Tensor], full: Grid | None = None) -> list[torch.Tensor]:
        """F_k (B, d, H, W) after each scale, from the bits (B, h_k, w_k, d) of the first scales.

        `full` is the last grid of the schedule; it defaults to the grid of the last bits given.
        """
        full = tuple(full or bits[-1].shape[1:3])
        return self.quantizer.codes_from_bits(bits, full)

    def decode_bits(self, bits: Sequence[torch.Tensor], full: Grid | None = None) -> torch.Tensor:
        return self.decode(self.cumulative_from_bits(bits, full)[-1])

    def bits_to_codes(self, bits_Bhwd: torch.Tensor) -> torch.Tensor:
        """Codes (B, d, h, w) of one scale's bits."""
        return self.quantizer.scale_quantizer.bits_to_codes(bits_Bhwd)

    @staticmethod
    def next_scale_input(F_BdHW: torch.Tensor, hw: Grid) -> torch.Tensor:
        """Transformer input (B, h*w, d) of the scale with grid `hw`, given F after the previous scales."""
        return next_scale_input(F_BdHW, hw)
