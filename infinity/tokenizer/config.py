"""Tokenizer configuration and the presets of the released Infinity tokenizers."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..configs import JsonConfig

QUANTIZERS = ("bsq", "lfq")


@dataclass(frozen=True)
class TokenizerConfig(JsonConfig):
    bits: int = 32  # d: bits per token = latent channels (each channel is one bit)
    base_channels: int = 128  # width of the first encoder level
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4, 4)  # width of each level, in base_channels
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder uses one more)
    patch_size: int = 16  # pixels per latent cell: log2(patch_size) stride-2 levels
    quantizer: str = "bsq"  # "bsq": binary spherical (l2-normalise, codes +-1/sqrt(d)); "lfq": sign, codes +-1
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_multipliers", tuple(int(m) for m in self.channel_multipliers))
        if self.bits < 1:
            raise ValueError(f"bits must be >= 1, got {self.bits}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        levels = math.log2(self.patch_size) if self.patch_size >= 1 else -1
        if not float(levels).is_integer() or not 0 <= levels <= len(self.channel_multipliers) - 1:
            raise ValueError(
                f"patch_size must be a power of two with log2(patch_size) <= len(channel_multipliers) - 1 "
                f"(one stride-2 level per multiplier but the last), got {self.patch_size} "
                f"with {len(self.channel_multipliers)} levels"
            )
        for width in {self.base_channels * m for m in self.channel_multipliers}:
            if width % 32 and width % 24:
                raise ValueError(f"every level width must be a multiple of 32 or 24 (GroupNorm groups), got {width}")

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.patch_size))



@dataclass(frozen=True)
class TokenizerPreset:
    config: TokenizerConfig
    weight_file: str  # file name in the Hugging Face repo FoundationVision/Infinity


# Released tokenizers: the dataclass defaults (base 128, multipliers 1,2,4,4,4, 2 blocks, patch 16) but bits.
TOKENIZER_PRESETS: dict[str, TokenizerPreset] = {
    "infinity-vae-d16": TokenizerPreset(TokenizerConfig(bits=16), "infinity_vae_d16.pth"),
    "infinity-vae-d24": TokenizerPreset(TokenizerConfig(bits=24), "infinity_vae_d24.pth"),
    "infinity-vae-d32": TokenizerPreset(TokenizerConfig(bits=32), "infinity_vae_d32.pth"),
    # Infinity-2B's tokenizer: the d32 architecture with other weights.
    "infinity-vae-d32reg": TokenizerPreset(TokenizerConfig(bits=32), "infinity_vae_d32reg.pth"),
    "infinity-vae-d64": TokenizerPreset(TokenizerConfig(bits=64), "infinity_vae_d64.pth"),
    # Infinity-8B's tokenizer: 14 bits, downsampling 8; the transformer sees 2x2 patches of it (4*14 = 56 bits).
    "infinity-vae-d56-f8": TokenizerPreset(
        TokenizerConfig(bits=14, channel_multipliers=(1, 2, 4, 4), patch_size=8),
        "infinity_vae_d56_f8_14_patchify.pth",
    ),
}
