"""Batches for the trainers, a pure function of (seed, step): resumable and the same under any process count.

Every step trains on one aspect ratio (all images of a batch share a scale schedule). The global batch of
step s is fixed by (seed, s); each process renders or loads only its rows of it.

- `ShapesSource`: the procedural shapes scenes, item i of the global stream rendered at the step's size.
- `FolderSource`: the uncaptioned images below a folder (the tokenizer's data), random resized crops at the
  step's size, every aspect ratio equally often; an image that fails to load is replaced by the next one.
- `JsonlSource`: images listed in the official JSONL layout, bucketed onto the schedules' aspect ratios; lines
  that cannot be used are reported once up front, an image that fails to load later is replaced by another of
  its bucket (with a warning) rather than stopping the run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.shapes import ShapesDataset
from ..schedules import Schedule
from .engine import step_generator

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    images_B3HW: torch.Tensor  # float in [-1, 1]
    captions: list[str]
    aspect_ratio: str  # key of the schedule every image of the batch uses


def _pick_aspect(names: list[str], weights: list[float], seed: int, step: int) -> str:
    g = step_generator(seed, step, "aspect")
    return names[int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=g))]


class ShapesSource:
    def __init__(self, schedules: dict[str, Schedule], seed: int = 0, split: str = "train", **dataset_options):
        self.schedules, self.seed = schedules, seed
        self.dataset = ShapesDataset(split=split, seed=seed, length=2**62, **dataset_options)

    def batch(self, step: int, global_batch: int, rows: slice) -> Batch:
        aspect = _pick_aspect(list(self.schedules), [1.0] * len(self.schedules), self.seed, step)
        H, W = self.schedules[aspect].pixel_hw
        images, captions = [], []
        for i in range(global_batch)[rows]:
            img_3HW, caption, _ = self.dataset.sample(step * global_batch + i, H, W)
            images.append(img_3HW)
            captions.append(caption)
        return Batch(torch.stack(images), captions, aspect)


class JsonlSource:
    def __init__(self, path: str | Path, schedules: dict[str, Schedule], seed: int = 0):
        from ..data.jsonl import JsonlDataset

        self.schedules, self.seed = schedules, seed
        by_template = {s.h_div_w: name for name, s in schedules.items()}
        self.dataset = JsonlDataset(path, {s.h_div_w: s.pixel_hw for s in schedules.values()})
        self.buckets = {by_template[t]: idx for t, idx in self.dataset.bucket_indices().items() if idx}
        if not self.buckets:
            raise ValueError(f"{path}: no usable line fits the aspect ratios {list(schedules)}")
        logger.info("%s: %s", path, ", ".join(f"{k}: {len(v)} images" for k, v in self.buckets.items()))

    def batch(self, step: int, global_batch: int, rows: slice) -> Batch:
        names = list(self.buckets)
        aspect = _pick_aspect(names, [float(len(self.buckets[n])) for n in names], self.seed, step)
        bucket = self.buckets[aspect]
        g = step_generator(self.seed, step, "jsonl")
        order = torch.randperm(len(bucket), generator=g).tolist()
        picks = [bucket[order[i % len(order)]] for i in range(global_batch)[rows]]
        images, captions = [], []
        for j, index in enumerate(picks):
            item = self.dataset.load(index)
            tries = 0
            while item is None and tries < len(bucket):  # unreadable now: use the next image of the bucket
                tries += 1
                item = self.dataset.load(bucket[order[(j + tries) % len(order)]])
            if item is None:
                raise RuntimeError(f"no image of the {aspect} bucket could be loaded")
            img_3HW, caption = item
            images.append(img_3HW)
            captions.append(caption)
        return Batch(torch.stack(images), captions, aspect)


class FolderSource:
    def __init__(self, folder: str | Path, schedules: dict[str, Schedule], seed: int = 0):
        from ..data.folder import ImageFolder

        self.schedules, self.seed = schedules, seed
        self.dataset = ImageFolder(folder)

    def batch(self, step: int, global_batch: int, rows: slice) -> Batch:
        aspect = _pick_aspect(list(self.schedules), [1.0] * len(self.schedules), self.seed, step)
        hw = self.schedules[aspect].pixel_hw
        g = step_generator(self.seed, step, "folder")
        n = len(self.dataset)
        picks = torch.randint(0, n, (global_batch,), generator=g).tolist()
        crop_seeds = torch.randint(0, 2**62, (global_batch,), generator=g).tolist()
        images = []
        for i in range(global_batch)[rows]:
            crop_g = torch.Generator().manual_seed(crop_seeds[i])
            for tries in range(n):
                img_3HW = self.dataset.load((picks[i] + tries) % n, hw, crop_g)
                if img_3HW is not None:
                    break
            else:
                raise RuntimeError(f"no image below {self.dataset.folder} could be loaded")
            images.append(img_3HW)
        return Batch(torch.stack(images), [""] * len(images), aspect)


def make_source(data: str, schedules: dict[str, Schedule], seed: int,
                object_count_weights: tuple[float, ...] | None = None):
    """'shapes', the path of a JSONL file, or a folder of images (no captions: tokenizers only);
    `object_count_weights`: relative weights of shapes scenes with
    1, 2, 3 objects (uniform if None)."""
    if data == "shapes":
        return ShapesSource(schedules, seed, num_objects=(1, 2, 3), weights=object_count_weights)
    if object_count_weights is not None:
        raise ValueError("object count weights apply to the shapes data only")
    if Path(data).is_dir():
        return FolderSource(data, schedules, seed)
    if not Path(data).is_file():
        raise ValueError(f"--data must be 'shapes', an existing JSONL file or a folder of images, got {data!r}")
    return JsonlSource(data, schedules, seed)
