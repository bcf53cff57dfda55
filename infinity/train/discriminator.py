"""A small PatchGAN discriminator and the hinge losses of the tokenizer's optional adversarial term.

Shapes: B batch, H/W pixels, h/w patch grid (H/8, W/8 with 3 stride-2 layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> real/fake scores (B, 1, h, w), one per overlapping patch."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(32, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.net(img_B3HW)


def hinge_discriminator_loss(real_B1hw: torch.Tensor, fake_B1hw: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_B1hw).mean() + F.relu(1 + fake_B1hw).mean())


def hinge_generator_loss(fake_B1hw: torch.Tensor) -> torch.Tensor:
    return -fake_B1hw.mean()
