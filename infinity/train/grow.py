"""Deepening a trained transformer: more blocks on top, the same function when training resumes.

The new blocks are freshly initialised except for the three projections that write into the residual stream
(self-attention's, cross-attention's and the FFN's output), which start at zero: each new block then adds
nothing, so the deeper model computes exactly what the trained one did, and the gradient reaches the new
blocks through those projections from the first step.
"""
from __future__ import annotations

import dataclasses

import torch

from ..transformer import Infinity, TransformerConfig


@torch.no_grad()
def deepen(model: Infinity, config: TransformerConfig) -> Infinity:
    """A model of `config` holding `model`'s weights, with blocks model.depth..config.depth-1 added as identities.

    `config` must equal `model.config` but for a larger depth; anything else raises ValueError.
    """
    old = model.config
    if dataclasses.replace(config, depth=old.depth) != old or config.depth <= old.depth:
        raise ValueError(f"can only deepen a transformer of the same configuration: {old} -> {config}")
    deeper = Infinity(config)
    missing, unexpected = deeper.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("blocks.") for k in missing):
        raise ValueError(f"weights do not fit the deeper model (missing {missing}, unexpected {unexpected})")
    for block in deeper.blocks[old.depth:]:
        for proj in (block.sa.proj, block.ca.proj, block.ffn.fc2):
            proj.weight.zero_()
            proj.bias.zero_()
    return deeper
