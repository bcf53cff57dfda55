"""What both trainers use: the text encoder by name, and text features per caption (encoded once).

Legend: B batch, T text tokens, E text width.
"""
from __future__ import annotations

import torch

from ..text import MiniLMTextEncoder, T5TextEncoder, TextEncoder


def load_text_encoder(name: str, device: torch.device, max_length: int) -> TextEncoder:
    if name == "minilm":
        return MiniLMTextEncoder.from_pretrained(None, device=device, max_length=max_length)
    return T5TextEncoder.from_pretrained(name, device=device)


class TextCache:
    """Text features per caption, computed once (captions repeat across steps)."""

    def __init__(self, encoder: TextEncoder, max_entries: int = 100_000):
        self.encoder, self.max_entries = encoder, max_entries
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        missing = sorted({c for c in captions if c not in self._cache})
        if missing:
            feats_BTE, lens_B = self.encoder.encode(missing)
            if len(self._cache) + len(missing) > self.max_entries:
                self._cache.clear()
            for c, f, n in zip(missing, feats_BTE.cpu(), lens_B.tolist()):
                self._cache[c] = f[:n].clone()
        rows = [self._cache[c] for c in captions]
        lens_B = torch.tensor([r.shape[0] for r in rows])
        text_BTE = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return text_BTE.to(device), lens_B.to(device)
