"""BitwiseTokenizer: encoder + multi-scale bitwise quantizer + decoder, and the spatial patchify of the 8B model.

Legend: B batch, d bits per latent cell, H/W full latent grid, h/w one scale's grid, K scales, s spatial patch,
n = s*s*d bits per transformer token, L tokens of all scales.
Images are float (B, 3, H*p, W*p) in [-1, 1], RGB; p = patch_size.

    f = tok.encode(img)                        # (B, d, H, W) raw features
    codes = tok.quantize(f, schedule.scales)   # bits per scale, F_k, teacher-forcing inputs
    img = tok.decode(codes.quantized)          # (B, 3, H*p, W*p) clamped to [-1, 1]
    img = tok.decode_bits(codes.bits)          # the same image, from the bits alone

Spatial patchify. Infinity-8B's transformer token is a 2x2 patch of latent cells of its 14-bit tokenizer
(56 bits per token), so a schedule of token grids (h, w) runs the tokenizer at (2h, 2w): residuals, codes and
F live at the latent grid, and only the transformer's inputs and bit targets are patchified. With s = 1 every
helper below is the identity, so one code path serves both kinds of model:

    s = spatial_patch(transformer.config.bits, tok.bits)
    codes = tok.encode_scales(img, latent_scales(schedule.scales, s))
    x_BLn = tok.teacher_forcing_inputs(codes, s)   # (B, L - 1, n)
    y_BLn = tok.targets(codes, s)                  # (B, L, n)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import TokenizerConfig
from .quantizer import FlipSource, Grid, MultiScaleCodes, MultiScaleQuantizer, bilinear_resize
from .vae import Decoder, Encoder


def spatial_patch(token_bits: int, latent_bits: int) -> int:
    """s such that one transformer token of `token_bits` bits is an s x s patch of `latent_bits`-bit latent cells.

    1 for the 2B model (32 = 32), 2 for the 8B model (56 = 4 * 14).
    """
    s = math.isqrt(token_bits // latent_bits) if token_bits % latent_bits == 0 else 0
    if s < 1 or s * s * latent_bits != token_bits:
        raise ValueError(
            f"the tokenizer has {latent_bits} bits per token but the transformer predicts {token_bits}: "
            f"a transformer token must be an s x s patch of latent cells (s*s*{latent_bits} bits)"
        )
    return s


def latent_scales(scales: Sequence[Grid], s: int) -> list[Grid]:
    """The tokenizer's grids (s*h, s*w) under a schedule of transformer token grids (h, w)."""
    return [(s * h, s * w) for h, w in scales]


def patchify(x_BdHW: torch.Tensor, s: int) -> torch.Tensor:
    """(B, d, s*h, s*w) -> (B, s*s*d, h, w): every s x s block of cells becomes one token.

    The channel order is pixel_unshuffle's, as in the official 8B model: token channel c*s*s + i*s + j is latent
    channel c of the block's cell in row i, column j (the s*s cells of one latent channel are adjacent).
    """
    if s == 1:
        return x_BdHW
    if x_BdHW.shape[-2] % s or x_BdHW.shape[-1] % s:
        raise ValueError(f"a grid of {tuple(x_BdHW.shape[-2:])} cells does not split into {s}x{s} patches")
    return F.pixel_unshuffle(x_BdHW, s)


def unpatchify(x_Bnhw: torch.Tensor, s: int) -> torch.Tensor:
    """(B, s*s*d, h, w) -> (B, d, s*h, s*w): the inverse of `patchify` (pixel_shuffle)."""
    return x_Bnhw if s == 1 else F.pixel_shuffle(x_Bnhw, s)


def patchify_bits(bits_BHWd: torch.Tensor, s: int) -> torch.Tensor:
    """Latent bits (B, s*h, s*w, d) -> token bits (B, h, w, s*s*d), in `patchify`'s channel order."""
    return patchify(bits_BHWd.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)


def unpatchify_bits(bits_Bhwn: torch.Tensor, s: int) -> torch.Tensor:
    """Token bits (B, h, w, s*s*d) -> latent bits (B, s*h, s*w, d): the inverse of `patchify_bits`."""
    return unpatchify(bits_Bhwn.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)


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

    def forward(self, img_B3HW: torch.Tensor, scales: Sequence[Grid], flips: FlipSource | None = None):
        """Training pass: (reconstruction from F_K, unclamped; the codes with the quantizer losses)."""
        codes = self.quantize(self.encode(img_B3HW), scales, flips=flips, with_losses=True)
        return self.decoder(codes.quantized), codes

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
    def next_scale_input(F_BdHW: torch.Tensor, hw: Grid, s: int = 1) -> torch.Tensor:
        """Transformer input (B, h*w, s*s*d) of the scale with token grid `hw`, given F after the previous scales.

        F is resized bilinearly to the scale's latent grid (s*h, s*w), then patchified (paper Eq. 4).
        """
        x_Bdhw = bilinear_resize(F_BdHW, latent_scales([hw], s)[0])
        return patchify(x_Bdhw, s).flatten(2).transpose(1, 2)

    @staticmethod
    def teacher_forcing_inputs(codes: MultiScaleCodes, s: int = 1) -> torch.Tensor:
        """(B, L - 1, s*s*d): the transformer inputs of scales 2..K, patchified like `next_scale_input`."""
        if s == 1:
            return codes.teacher_forcing_inputs()
        inputs = []
        for x_Bld, bits in zip(codes.next_inputs, codes.bits[1:]):
            B, h, w, d = bits.shape  # the scale's latent grid
            x_Bdhw = x_Bld.transpose(1, 2).reshape(B, d, h, w)
            inputs.append(patchify(x_Bdhw, s).flatten(2).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    @staticmethod
    def targets(codes: MultiScaleCodes, s: int = 1) -> torch.Tensor:
        """(B, L, s*s*d) uint8: the (clean) bits of every scale as transformer tokens, scales concatenated."""
        return torch.cat([patchify_bits(b, s).flatten(1, 2) for b in codes.bits], dim=1)
