"""Bitwise self-correction (paper Sec. 3.3, Algorithm 4).

Teacher forcing shows the transformer only perfect histories, but at inference it conditions on its own
sampled bits, mistakes included. Self-correction trains on corrupted histories instead: at each of the
first `num_scales` scales, a random fraction of the bits is flipped and the flipped bits are re-quantized
into the running sum F. Later residuals are taken against that corrupted F, so their targets are the bits
that *correct* the earlier mistakes. The target of a corrupted scale itself stays its clean bit.

The randomness is injectable: `MultiScaleQuantizer.forward(..., flips=source)` asks `source(k, bits)` for
a flip mask at every scale, so tests can replay recorded masks.

Flipping itself lives here once: `flip_bits` inverts the bits under a mask (training, the quantizer's flip
sources, the app's explorer), `fraction_mask` draws a mask with an exact share of the bits, and `flip_fraction`
combines the two for the sampler's interventions and the recovery measure's no-correction reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SelfCorrection:
    """Flip bits at the first `num_scales` scales, each scale with probability p ~ U{0, 0.01, ..., strength}.

    The official training recipe uses num_scales=13 (every scale of the 1M schedule) and strength=0.3.
    """

    num_scales: int = 13
    strength: float = 0.3

    def __post_init__(self) -> None:
        if self.num_scales < 0:
            raise ValueError(f"num_scales must be >= 0, got {self.num_scales}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength (largest flip probability) must be in [0, 1], got {self.strength}")

    def flips(self, generator: torch.Generator | None = None) -> RandomFlips:
        return RandomFlips(self, generator)


def flip_bits(bits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The bits (0/1, any shape) inverted where `mask` (bool, same shape, any device) is True."""
    return torch.where(mask.to(device=bits.device, dtype=torch.bool), 1 - bits, bits)


def fraction_mask(shape: torch.Size | tuple[int, ...], fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of `shape` (on the CPU) with exactly round(fraction * numel) True entries, drawn uniformly."""
    n = int(torch.Size(shape).numel())
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    return flat.view(shape)


def flip_fraction(bits: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """The bits with exactly round(fraction * numel) of them, chosen uniformly with `seed`, inverted. The positions
    are drawn on the CPU, so the same seed flips the same bits on any device."""
    return flip_bits(bits, fraction_mask(bits.shape, fraction, torch.Generator().manual_seed(seed)))


class RandomFlips:
    """A flip source: per corrupted scale, one flip probability for the batch, then independent flips."""

    def __init__(self, cfg: SelfCorrection, generator: torch.Generator | None = None):
        self.cfg, self.generator = cfg, generator

    def __call__(self, k: int, bits_Bhwd: torch.Tensor) -> torch.Tensor | None:
        if k >= self.cfg.num_scales:
            return None
        # Percent steps as in the official recipe: p in {0, 0.01, ..., strength}.
        steps = int(round(100 * self.cfg.strength)) + 1
        p = torch.randint(0, steps, (), generator=self.generator).item() / 100
        u = torch.rand(bits_Bhwd.shape, generator=self.generator)
        return (u < p).to(bits_Bhwd.device)

