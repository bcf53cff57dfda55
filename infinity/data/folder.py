"""Uncaptioned images from a folder, for the tokenizer: random resized crops at the size it is used.

A tokenizer needs no captions, so any folder of pictures trains it (the corpus of `python -m
infinity.data.corpus` writes one). Crops are whole images of the target size, never patches of one: the
networks normalise with GroupNorm over the whole image, so a model trained on small patches of larger images
reconstructs whole images worse (measured on the shapes tokenizer: 19 dB against 27 dB).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from PIL import Image

from infinity.images import open_image, to_tensor

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tga", ".gif"})


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file below `folder` (by suffix), sorted, so the list is the same on every machine."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) below it")
    return files


def random_resized_crop(img: Image.Image, hw: tuple[int, int], generator: torch.Generator,
                        min_area: float = 0.25) -> Image.Image:
    """A crop of the target aspect ratio covering between `min_area` and all of the largest such crop, at a
    random place, mirrored half of the time, resized (bicubic, antialiased) to `hw` = (H, W)."""
    H, W = hw
    w, h = img.size
    full_w, full_h = min(w, h * W / H), min(h, w * H / W)  # the largest crop of aspect H / W
    r = torch.rand(4, generator=generator).tolist()
    side = math.sqrt(min_area + (1 - min_area) * r[0])
    cw, ch = max(1, round(full_w * side)), max(1, round(full_h * side))
    left, top = round((w - cw) * r[1]), round((h - ch) * r[2])
    crop = img.crop((left, top, left + cw, top + ch)).resize((W, H), Image.BICUBIC, reducing_gap=3.0)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if r[3] < 0.5 else crop


class ImageFolder:
    """The images below a folder; `load` gives a random resized crop as a (3, H, W) tensor in [-1, 1], or None
    (logged) when the file cannot be read."""

    def __init__(self, folder: str | os.PathLike, min_area: float = 0.25):
        if not 0 < min_area <= 1:
            raise ValueError(f"min_area must be in (0, 1], got {min_area}")
        self.folder, self.min_area = Path(folder), min_area
        self.files = list_images(folder)
        logger.info("%s: %d images", folder, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor | None:
        try:
            img = open_image(self.files[index])
        except ValueError as e:
            logger.warning("skipped: %s", e)
            return None
        return to_tensor(random_resized_crop(img, hw, generator, self.min_area))[0]
