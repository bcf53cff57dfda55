"""Transformer configuration and the presets of the released Infinity models.

Architecture choices that are not options (every released model uses them, the paper describes them):
cosine self-attention with a learned per-head scale, 2-D RoPE normalised to the largest grid of the
aspect ratio, one AdaLN shared by all blocks (plus a per-block learned offset), level embedding added
once before the first block. The head is the Infinite-Vocabulary Classifier (2 logits per bit) of every
released model; `head="index"` swaps in a softmax over all 2^d indices (VAR-style) for comparisons at small d.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..configs import JsonConfig


HEADS = ("bits", "index")
MAX_INDEX_BITS = 16


@dataclass(frozen=True)
class TransformerConfig(JsonConfig):
    depth: int = 32  # number of blocks
    width: int = 2048  # C: model width (the official `embed_dim`); also the width of the condition cond_BD
    num_heads: int = 16  # self- and cross-attention heads
    bits: int = 32  # d: bits per token the head predicts (tokenizer bits; x4 for a spatially patchified tokenizer)
    text_channels: int = 2048  # width of the text encoder's features (Flan-T5-XL: 2048)
    text_maxlen: int = 512  # rows of the learned unconditional text `cfg_uncond` (longest prompt in tokens)
    mlp_ratio: float = 4.0  # FFN hidden width = round(width * mlp_ratio / 256) * 256
    max_scales: int = 15  # rows of the level embedding (one per scale index)
    drop_path_rate: float = 0.1  # stochastic depth of the last block in training (linear from 0 at block 0)
    head: str = "bits"  # "bits": the paper's d binary classifiers; "index": VAR-style softmax over 2^d (small d)

    def __post_init__(self) -> None:
        if min(self.depth, self.width, self.num_heads, self.bits, self.text_channels, self.text_maxlen) < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.width % self.num_heads or self.head_dim % 4:
            raise ValueError(
                f"width / num_heads must be a multiple of 4 (2-D RoPE rotates pairs, half of them per axis), "
                f"got width {self.width} and {self.num_heads} heads"
            )
        if self.text_pool_heads < 1 or self.width % self.text_pool_heads:
            raise ValueError(
                f"the SOS attention pool uses text_channels // {self._text_pool_head_size} heads, which must be >= 1 "
                f"and divide the width; got text_channels {self.text_channels}, width {self.width}"
            )
        if self.ffn_hidden < 1:
            raise ValueError(f"FFN hidden width rounds to 0 (width {self.width}, mlp_ratio {self.mlp_ratio})")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "index" and self.bits > MAX_INDEX_BITS:
            raise ValueError(f"an index-wise head over 2^{self.bits} classes is too large (at most {MAX_INDEX_BITS} bits)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.width * self.mlp_ratio / 256) * 256

    @property
    def vocab(self) -> int:
        """V: logits per token: two per bit (score of 0, score of 1), or one per index (sum of bit_j * 2^j)."""
        return 2 * self.bits if self.head == "bits" else 2**self.bits

    @property
    def _text_pool_head_size(self) -> int:
        # The official attention pool picks its head count from the text width with this rule.
        return 128 if self.width <= 4096 else 64

    @property
    def text_pool_heads(self) -> int:
        return self.text_channels // self._text_pool_head_size



# The released models (tools/run_infinity.py + scripts/infer.sh of the official repository).
TRANSFORMER_PRESETS: dict[str, TransformerConfig] = {
    # `infinity_layer12`, released for 256x256 (infinity_125M_256x256.pth): the 2B flags, a d16 tokenizer.
    "infinity-125m": TransformerConfig(depth=12, width=768, num_heads=8, bits=16, text_channels=2048),
    "infinity-2b": TransformerConfig(depth=32, width=2048, num_heads=16, bits=32, text_channels=2048),
    # The 8B model's tokenizer has 14 bits per latent cell and is applied with a 2x2 spatial patchify,
    # so each transformer token carries 4 * 14 = 56 bits.
    "infinity-8b": TransformerConfig(depth=40, width=3584, num_heads=28, bits=56, text_channels=2048),
}
