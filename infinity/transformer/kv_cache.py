"""What sampling keeps between scales, per block: self-attention keys and values of the scales sampled so far,
and cross-attention keys and values of the text.

Legend: B batch, N heads, L tokens of all scales, l tokens of one scale, c head dimension, T text tokens.

The self-attention buffers are allocated once for the whole schedule; each scale writes its keys/values after
the previous scales' and attends over the filled prefix, so nothing is re-concatenated per scale. The text is
the same at every scale, so each block projects it to keys/values once (at the first scale) and reuses them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

KeysValues = tuple[torch.Tensor, torch.Tensor]


class KVCache:
    def __init__(
        self,
        depth: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.max_len = max_len
        self.length = 0  # tokens already stored (the scales before the one being run)
        self.kv = torch.empty(depth, 2, batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype)
        self.text_kv: list[KeysValues | None] = [None] * depth  # per block: (B, N, T, c) keys and values

    def extend(self, layer: int, k_BNlc: torch.Tensor, v_BNlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this scale's keys/values of `layer`; return the layer's keys/values of all scales so far."""
        end = self.length + k_BNlc.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens, got {end}")
        self.kv[layer, 0, :, :, self.length : end] = k_BNlc
        self.kv[layer, 1, :, :, self.length : end] = v_BNlc
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]

    def text_keys_values(self, layer: int, project: Callable[[], KeysValues]) -> KeysValues:
        """The layer's cross-attention keys/values of the text: `project()` at the first scale, stored after."""
        if self.text_kv[layer] is None:
            self.text_kv[layer] = project()
        return self.text_kv[layer]

    def advance(self, num_tokens: int) -> None:
        """Mark a scale as done once every block has stored it."""
        self.length += num_tokens
