"""The transformer's training objective and its most likely bits, for either head (paper Sec. 3.2).

Both heads' losses are in nats per bit: -log p(a token's d bits) / d. The bitwise head (the Infinite-Vocabulary
Classifier) predicts each of the d bits on its own, so its mean over bits is exactly that; the index-wise head's
cross-entropy over 2^d classes is divided by d. At initialisation both are ln 2, so one gradient clip fits both.
The trainer, the evaluator and the claims experiment all score a model with these.

Legend: B batch, L tokens of all scales, d bits per token, V logits per token (2d or 2^d).
"""
from __future__ import annotations

import torch


def bitwise_cross_entropy(logits_BLV: torch.Tensor, targets_BLd: torch.Tensor, weights_L: torch.Tensor) -> torch.Tensor:
    """Mean over bits, weighted mean over tokens, mean over the batch, of -log p(target bit); weights (L,) or (B, L)."""
    B, L, d = targets_BLd.shape
    logp_BLd2 = logits_BLV.float().view(B, L, d, 2).log_softmax(dim=-1)
    nll_BLd = -logp_BLd2.gather(-1, targets_BLd.long().unsqueeze(-1)).squeeze(-1)
    return (nll_BLd.mean(dim=-1) * weights_L.to(nll_BLd.device)).mean()


def bits_to_index(bits_BLd: torch.Tensor) -> torch.Tensor:
    """(B, L, d) {0,1} -> (B, L) index sum_j bit_j * 2^j (the class of an index-wise head)."""
    weights_d = 2 ** torch.arange(bits_BLd.shape[-1], device=bits_BLd.device)
    return (bits_BLd.long() * weights_d).sum(-1)


def index_cross_entropy(logits_BLV: torch.Tensor, targets_BLd: torch.Tensor, weights_L: torch.Tensor) -> torch.Tensor:
    """The index-wise head's loss on the bitwise loss's scale (nats per bit): weighted mean over tokens of
    -log p(index of the target bits) / d."""
    B, L, V = logits_BLV.shape
    nll_BL = torch.nn.functional.cross_entropy(
        logits_BLV.float().reshape(B * L, V), bits_to_index(targets_BLd).reshape(B * L), reduction="none"
    ).view(B, L)
    return (nll_BL * weights_L.to(nll_BL.device)).mean() / targets_BLd.shape[-1]


def predicted_bits(logits_BLV: torch.Tensor, d: int, head: str) -> torch.Tensor:
    """The most likely bits (B, L, d) under either head."""
    if head == "bits":
        return logits_BLV.view(*logits_BLV.shape[:2], d, 2).argmax(-1)
    index_BL = logits_BLV.argmax(-1)
    return (index_BL[..., None] >> torch.arange(d, device=index_BL.device)) & 1
