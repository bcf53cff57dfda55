"""Where the objects of a shapes image are: pixels unlike the image's border, and each token's share of them.

The trainers weight the few tokens that draw objects above the many that repeat the background; the evaluator
splits bit errors into object and background tokens with the same mask.

Legend: B batch, H/W pixels, L tokens of all scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..schedules import Schedule


def background_mask(img_B3HW: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, 1, H, W) True where a pixel differs from the image's background (median colour of its border)."""
    border = torch.cat([img_B3HW[..., 0, :], img_B3HW[..., -1, :], img_B3HW[..., :, 0], img_B3HW[..., :, -1]], dim=-1)
    bg_B3 = border.median(dim=-1).values
    return (img_B3HW - bg_B3[..., None, None]).abs().amax(dim=1, keepdim=True) > threshold


def object_token_weights(img_B3HW: torch.Tensor, schedule: Schedule, object_weight: float) -> torch.Tensor:
    """(B, L): 1 + object_weight * the share of each token's cell covered by objects, scales concatenated."""
    mask_B1HW = background_mask(img_B3HW).float()
    cover_BL = torch.cat([F.interpolate(mask_B1HW, size=hw, mode="area").flatten(1) for hw in schedule.scales], dim=1)
    return 1 + object_weight * cover_BL
