"""Bitwise quantizers: one scale (BSQ or LFQ), and the multi-scale residual quantizer of paper Algorithm 1.

Legend: B batch, d bits per token (= latent channels), h/w one scale's grid, H/W the full latent grid,
K scales, l = h*w tokens of one scale, L tokens of all scales.

One scale. Every latent position holds a d-vector z; each channel becomes one bit, 1 where the
component is > 0 (exactly 0 gives 0). The code of a bit vector b is (2b - 1) * s:
  * BSQ (binary spherical quantization, arXiv 2406.07548): z is first l2-normalised and s = 1/sqrt(d),
    so every code is a unit vector and the magnitude of z is discarded.
  * LFQ (lookup-free quantization, MAGVIT-v2): z is used as is and s = 1.
The sign does not change under normalisation, so both give the same bits; they differ in the code scale,
in the straight-through gradient and in the entropy penalty below.

Many scales (Algorithm 1). With F_0 = 0 and the encoder features f at H x W, for k = 1..K:
    r_k = area_resize(f - F_{k-1}, h_k x w_k)        # average pooling (overlapping windows if h_k ∤ H)
    q_k = quantize(r_k)                               # bits b_k, code q_k at h_k x w_k
    F_k = F_{k-1} + bilinear_resize(q_k, H x W)       # align_corners=False, no antialias
F_K is the quantized feature the decoder sees. The transformer's teacher-forcing input for scale k+1 is
F_k resized bilinearly down to h_{k+1} x w_{k+1} (paper Eq. 4). An optional flip source corrupts the bits
of early scales before they enter F (bitwise self-correction, Algorithm 4; see self_correction.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .self_correction import flip_bits

# (scale index, bits (B, h, w, d)) -> bool flip mask of the same shape, or None for no flips at that scale.
FlipSource = Callable[[int, torch.Tensor], "torch.Tensor | None"]

Grid = tuple[int, int]


def area_resize(x_BdHW: torch.Tensor, hw: Grid) -> torch.Tensor:
    if tuple(x_BdHW.shape[-2:]) == tuple(hw):
        return x_BdHW
    return F.adaptive_avg_pool2d(x_BdHW, hw)


def bilinear_resize(x_Bdhw: torch.Tensor, hw: Grid) -> torch.Tensor:
    if tuple(x_Bdhw.shape[-2:]) == tuple(hw):
        return x_Bdhw
    return F.interpolate(x_Bdhw, size=hw, mode="bilinear", align_corners=False)


REFERENCE_BITS = 16  # the entropy penalty equals the BSQ paper's literal formula at this depth


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + 1e-8) + (1 - p) * torch.log(1 - p + 1e-8))


class BitQuantizer(nn.Module):
    """Quantizes one scale: d-vectors -> d bits and their codes. No weights."""

    def __init__(self, bits: int, kind: str = "bsq"):
        super().__init__()
        if kind not in ("bsq", "lfq"):
            raise ValueError(f"quantizer kind must be 'bsq' or 'lfq', got {kind!r}")
        self.bits, self.kind = bits, kind
        self.code_scale = 1 / math.sqrt(bits) if kind == "bsq" else 1.0

    def _prepare(self, z_Bdhw: torch.Tensor) -> torch.Tensor:
        return F.normalize(z_Bdhw, dim=1) if self.kind == "bsq" else z_Bdhw

    def forward(self, z_Bdhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (code (B, d, h, w) with straight-through gradient, bits (B, h, w, d) uint8)."""
        u = self._prepare(z_Bdhw.float())
        code = torch.where(u > 0, self.code_scale, -self.code_scale).to(u.dtype)
        bits_Bhwd = (u > 0).permute(0, 2, 3, 1).to(torch.uint8)
        return u + (code - u).detach(), bits_Bhwd

    def bits_to_codes(self, bits_Bhwd: torch.Tensor) -> torch.Tensor:
        """(B, h, w, d) {0,1} -> codes (B, d, h, w): (2b - 1) * s."""
        signs = bits_Bhwd.to(torch.float32) * 2 - 1
        return (signs * self.code_scale).permute(0, 3, 1, 2).contiguous()

    def losses(self, z_Bdhw: torch.Tensor, inv_temperature: float = 100.0, gamma: float = 1.0) -> dict[str, torch.Tensor]:
        """Entropy penalty and commitment loss of one scale (BSQ paper Sec. 3.3), with the same meaning at every d.

        With codes +-s, the softmax over the 2^d codes of -||u - c||^2 * inv_temperature factorises per bit:
        p(bit_j = 1) = sigmoid(4 * s * u_j * inv_temperature). The penalty is the mean per-token entropy
        (makes every token confident) minus gamma times the entropy of the batch-mean bit distribution,
        approximated by the sum of per-bit entropies (rewards using all codes).

        Taken literally both factors depend on d: a BSQ component u_j is ~1/sqrt(d) and s = 1/sqrt(d), so the
        logit shrinks as 1/d, and the sums over bits grow as d. We measure each bit on the d-free scale
        u_j * sqrt(d) and average over bits, both normalised so that d = REFERENCE_BITS gives the literal formula:
        the penalty's weight then means the same whatever the tokenizer's depth.
        """
        u = self._prepare(z_Bdhw.float())
        d = self.bits
        logit_scale = 4 * inv_temperature * (self.code_scale * d / REFERENCE_BITS if self.kind == "bsq" else 1.0)
        p1 = torch.sigmoid(logit_scale * u)  # (B, d, h, w)
        per_token = _binary_entropy(p1).mean(dim=1).mean() * REFERENCE_BITS
        codebook = _binary_entropy(p1.mean(dim=(0, 2, 3))).mean() * REFERENCE_BITS
        code = torch.where(u > 0, self.code_scale, -self.code_scale).to(u.dtype)
        commitment = F.mse_loss(u, code.detach())
        return {"entropy_penalty": per_token - gamma * codebook, "commitment": commitment}


@dataclass
class MultiScaleCodes:
    """What the multi-scale quantizer produced for one batch (lists have one entry per scale)."""

    bits: list[torch.Tensor]  # (B, h, w, d) uint8: bits of each scale's residual (the transformer targets)
    used_bits: list[torch.Tensor]  # (B, h, w, d) uint8: the bits that entered F (differ from `bits` where flipped)
    residuals: list[torch.Tensor]  # (B, d, h, w): r_k, the residual quantized at scale k
    cumulative: list[torch.Tensor]  # (B, d, H, W): F_k after each scale; F_K = `quantized` numerically
    quantized: torch.Tensor  # (B, d, H, W): F_K, straight-through gradients to the features
    next_inputs: list[torch.Tensor]  # (B, l_{k+1}, d): F_k resized to scale k+1, for k = 1..K-1
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # summed over scales, when asked for

    def teacher_forcing_inputs(self) -> torch.Tensor:
        """(B, L - l_1, d): the transformer inputs of scales 2..K (scale 1's input is the SOS token)."""
        return torch.cat(self.next_inputs, dim=1)

    def targets(self) -> torch.Tensor:
        """(B, L, d) uint8: the bits of every scale, row-major within a scale, scales concatenated."""
        return torch.cat([b.flatten(1, 2) for b in self.bits], dim=1)


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over a schedule of grids (Algorithm 1), with optional bit flips (Algorithm 4)."""

    def __init__(self, bits: int, kind: str = "bsq"):
        super().__init__()
        self.scale_quantizer = BitQuantizer(bits, kind)

    def forward(
        self,
        f_BdHW: torch.Tensor,
        scales: Sequence[Grid],
        flips: FlipSource | None = None,
        with_losses: bool = False,
    ) -> MultiScaleCodes:
        full = tuple(f_BdHW.shape[-2:])
        if tuple(scales[-1]) != full:
            raise ValueError(f"the last scale {tuple(scales[-1])} must equal the feature grid {full}")
        f_BdHW = f_BdHW.float()
        F_cum = torch.zeros_like(f_BdHW)
        out = MultiScaleCodes([], [], [], [], F_cum, [])
        for k, hw in enumerate(scales):
            # The residual is taken against a detached sum so each scale's gradient reaches f directly.
            r_Bdhw = area_resize(f_BdHW - F_cum.detach(), hw)
            code_Bdhw, bits = self.scale_quantizer(r_Bdhw)
            used = bits
            mask = flips(k, bits) if flips is not None else None
            if mask is not None and mask.any():
                used = flip_bits(bits, mask)
                code_Bdhw = self.scale_quantizer.bits_to_codes(used).to(f_BdHW.dtype)  # re-quantize
            if with_losses:
                for name, value in self.scale_quantizer.losses(r_Bdhw).items():
                    out.losses[name] = out.losses.get(name, 0.0) + value
            F_cum = F_cum + bilinear_resize(code_Bdhw, full)
            out.bits.append(bits)
            out.used_bits.append(used)
            out.residuals.append(r_Bdhw)
            out.cumulative.append(F_cum)
            if k + 1 < len(scales):
                out.next_inputs.append(next_scale_input(F_cum, scales[k + 1]))
        out.quantized = F_cum
        if with_losses:
            # Classic VQ commitment on the sum: pulls f towards what K unit-norm codes can reach. Without it f
            # can grow far beyond F_K, the straight-through gradient then treats F_K as f although they differ.
            out.losses["feature_commitment"] = F.mse_loss(f_BdHW, F_cum.detach())
        return out

    def codes_from_bits(self, bits: Sequence[torch.Tensor], full: Grid) -> list[torch.Tensor]:
        """F_k (B, d, H, W) after every scale, from the bits of each scale (B, h_k, w_k, d)."""
        cumulative, F_cum = [], 0.0
        for b in bits:
            F_cum = F_cum + bilinear_resize(self.scale_quantizer.bits_to_codes(b), full)
            cumulative.append(F_cum)
        return cumulative


def next_scale_input(F_BdHW: torch.Tensor, hw: Grid) -> torch.Tensor:
    """The transformer input for a scale: F resized bilinearly to its grid, flattened row-major (B, h*w, d)."""
    return bilinear_resize(F_BdHW, hw).flatten(2).transpose(1, 2)
