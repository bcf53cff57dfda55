"""Do seeds matter? The spread of a pipeline's images over seeds, for prompts that leave something open.

A shapes caption that does not name its background leaves it open: in training such captions came with black,
white and gray backgrounds in equal shares (`infinity.data.shapes._draw_scene`). A model that samples from what
it learned should spread its backgrounds over seeds in about those shares; one whose guidance or temperature is
too sharp gives every seed the same background and nearly the same pixels (seeds then change nothing a person
can see). Two figures, for held-out one-object captions without a background, `seeds` seeds each:

- background spread: the backgrounds the scene parser reads, pooled over prompts and seeds, against the training
  shares: their total variation distance (0 = the training shares, 2/3 = always the same background), and the
  mean number of distinct backgrounds per prompt (1 = seeds never change it, 3 = all three seen);
- mean pixel difference: |a - b| over the pixels and channels of every pair of seeds of one prompt (0..255).

Adherence is the other side of the same dial; `python -m infinity.eval shapes` measures it.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.scene_parser import parse_image
from ..data.shapes import BACKGROUNDS, Scene, caption, held_out_scenes

# Mean |a - b| (0..255) between two images from which they count as visibly different: the embedded model's
# target for seeds of a prompt that leaves something open.
VISIBLE_DIFFERENCE = 8.0


@dataclass(frozen=True)
class Diversity:
    prompts: int
    seeds: int
    backgrounds: dict[str, int]  # pooled counts of the parsed backgrounds
    distinct_backgrounds: float  # mean over prompts of the number of distinct backgrounds over its seeds
    background_tv: float  # total variation distance of the pooled shares from the training shares
    pixel_difference: float  # mean |a - b| (0..255) between two seeds' images of one prompt

    def table(self, title: str) -> str:
        shares = ", ".join(f"{name} {count}" for name, count in sorted(self.backgrounds.items()))
        return "\n".join([
            title,
            f"  {self.prompts} prompts x {self.seeds} seeds; backgrounds seen: {shares}",
            f"  distinct backgrounds per prompt: {self.distinct_backgrounds:.2f} of {len(BACKGROUNDS)}",
            f"  distance from the training shares (total variation, 0 best): {self.background_tv:.3f}",
            f"  mean pixel difference between seeds: {self.pixel_difference:.1f}/255",
        ])

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "backgrounds": self.backgrounds,
                "distinct_backgrounds": round(self.distinct_backgrounds, 3),
                "background_tv": round(self.background_tv, 4), "pixel_difference": round(self.pixel_difference, 2)}


def open_background_scenes(count: int, seed: int = 0) -> list[Scene]:
    """`count` held-out one-object scenes whose captions leave the background open."""
    return held_out_scenes(1, count, seed, background_caption_prob=0.0)


def mean_pixel_difference(images: Sequence[np.ndarray]) -> float:
    """Mean |a - b| (0..255) over the pixels and channels of every pair of images (0 for fewer than two)."""
    pairs = [np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in itertools.combinations(images, 2)]
    return float(np.mean(pairs)) if pairs else 0.0


def background_tv(counts: Counter) -> float:
    """Total variation distance of the counts' shares from the training shares (equal over BACKGROUNDS)."""
    total = sum(counts.values())
    return 0.5 * sum(abs(counts.get(name, 0) / total - 1 / len(BACKGROUNDS)) for name in BACKGROUNDS)


def measure(images_per_prompt: Sequence[Sequence[np.ndarray]]) -> Diversity:
    """The figures for (H, W, 3) uint8 images, one list of seeds per prompt."""
    pooled, distinct, differences = Counter(), [], []
    for images in images_per_prompt:
        backgrounds = [parse_image(im).background for im in images]
        pooled.update(backgrounds)
        distinct.append(len(set(backgrounds)))
        differences.append(mean_pixel_difference(images))
    return Diversity(len(images_per_prompt), len(images_per_prompt[0]), dict(pooled), float(np.mean(distinct)),
                     background_tv(pooled), float(np.mean(differences)))


def evaluate_diversity(pipe, scenes: Sequence[Scene], seeds: int, aspect_ratio: str = "1:1", seed: int = 0,
                       **sampling) -> Diversity:
    """Generate every scene's caption with seeds seed .. seed + seeds - 1 and measure the spread."""
    if seeds < 2:
        raise ValueError(f"diversity needs at least 2 seeds per prompt, got {seeds}")
    images = [[np.asarray(pipe(caption(scene), aspect_ratio=aspect_ratio, seed=seed + i, **sampling).image)
               for i in range(seeds)] for scene in scenes]
    return measure(images)
