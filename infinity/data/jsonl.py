"""Image-caption pairs in the official Infinity layout: a JSONL file, one JSON object per line.

Fields (as the official README lists them): "image_path" (relative paths resolve against the JSONL file's
folder), "h_div_w" (the image's height / width) and the caption. The official data carries a required
"long_caption" and an optional short "text"; we take the first non-empty of "text", "long_caption" and
"caption".

Each line goes to the bucket (an aspect-ratio template with its training size in pixels) nearest to its h_div_w,
by linear distance as the official bucketing. Problems are reported, never raised mid-epoch: a line that cannot
be used (malformed JSON, a missing key, a missing or unreadable image, an aspect ratio no bucket can take, an
h_div_w that disagrees with the image) is logged with its line number and kept in `skipped` when the file is
read; an image that fails later, when loaded, is logged and skipped the same way (`load` returns None).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from infinity.images import fit, open_image, to_tensor

logger = logging.getLogger(__name__)

CAPTION_KEYS = ("text", "long_caption", "caption")
H_DIV_W_TOLERANCE = 0.05  # relative disagreement allowed between a line's h_div_w and its image's size


@dataclass(frozen=True)
class JsonlItem:
    line_no: int  # 1-based line of the JSONL file
    image_path: Path
    h_div_w: float
    caption: str
    template: float  # the bucket's aspect-ratio template (height / width)


def crop_loss(h_div_w: float, template: float) -> float:
    """Share of an image of aspect `h_div_w` that a center crop to aspect `template` cuts away."""
    return 1 - min(h_div_w / template, template / h_div_w)


class JsonlDataset:
    """Captioned images from a JSONL file, bucketed by aspect ratio.

    path:              the JSONL file.
    buckets:           aspect-ratio template (height / width) -> (height, width) in pixels images are loaded at.
    max_aspect_error:  the largest share of an image its bucket's center crop may cut away (0.2: a 1.2 image
                       still goes to a 1.0 bucket, a 1.3 one does not).
    """

    def __init__(self, path: str | os.PathLike, buckets: dict[float, tuple[int, int]], max_aspect_error: float = 0.2):
        if not buckets:
            raise ValueError("need at least one bucket")
        for template, (height, width) in buckets.items():
            if not (template > 0 and height >= 1 and width >= 1):
                raise ValueError(f"bad bucket {template}: ({height}, {width})")
        if not 0 <= max_aspect_error < 1:
            raise ValueError(f"max_aspect_error must be in [0, 1), got {max_aspect_error}")
        self.path = Path(path)
        self.buckets = {float(t): (int(h), int(w)) for t, (h, w) in buckets.items()}
        self.max_aspect_error = max_aspect_error
        self.items: list[JsonlItem] = []
        self.skipped: list[tuple[int, str]] = []  # (line number, reason), from reading and from loading
        with open(self.path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                item = self._parse_line(line_no, line)
                if isinstance(item, str):
                    self._skip(line_no, item)
                else:
                    self.items.append(item)
        logger.info("%s: %d images in %d buckets, %d lines skipped", self.path, len(self.items),
                    len(self.bucket_indices()), len(self.skipped))

    def _skip(self, line_no: int, reason: str) -> None:
        logger.warning("%s:%d skipped: %s", self.path, line_no, reason)
        self.skipped.append((line_no, reason))

    def _parse_line(self, line_no: int, line: str) -> JsonlItem | str:
        """The line's item, or the reason it cannot be used."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            return f"malformed JSON ({e.msg} at column {e.colno})"
        if not isinstance(record, dict):
            return "not a JSON object"
        caption = next((record[k] for k in CAPTION_KEYS if isinstance(record.get(k), str) and record[k].strip()),
                       None)
        if caption is None:
            return f"no caption (one of {', '.join(CAPTION_KEYS)})"
        if not isinstance(record.get("image_path"), str) or not record["image_path"]:
            return "no image_path"
        try:
            h_div_w = float(record["h_div_w"])
        except (KeyError, TypeError, ValueError):
            return f"no numeric h_div_w (got {record.get('h_div_w')!r})"
        if not (math.isfinite(h_div_w) and h_div_w > 0):
            return f"h_div_w must be a positive number, got {h_div_w}"

        template = min(self.buckets, key=lambda t: abs(t - h_div_w))
        if crop_loss(h_div_w, template) > self.max_aspect_error:
            return f"aspect ratio h/w {h_div_w:.3f} is too far from every bucket ({', '.join(map(str, self.buckets))})"

        image_path = self.path.parent / record["image_path"]  # an absolute image_path stays as it is
        if not image_path.is_file():
            return f"missing image {image_path}"
        try:
            with Image.open(image_path) as img:
                width, height = img.size
                img.verify()  # checks the file's structure without decoding all of it
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return f"unreadable image {image_path} ({e})"
        if abs(height / width / h_div_w - 1) > H_DIV_W_TOLERANCE:
            return f"h_div_w {h_div_w:.3f} disagrees with the image's {width}x{height} ({height / width:.3f})"
        return JsonlItem(line_no, image_path, h_div_w, caption, template)

    def __len__(self) -> int:
        return len(self.items)

    def bucket_indices(self) -> dict[float, list[int]]:
        """Template -> indices of its items, in file order (only buckets with items)."""
        indices: dict[float, list[int]] = {}
        for i, item in enumerate(self.items):
            indices.setdefault(item.template, []).append(i)
        return indices

    def load(self, index: int) -> tuple[torch.Tensor, str] | None:
        """(image (3, H, W) float in [-1, 1] resized and center-cropped to its bucket's size, caption), or None
        (logged and added to `skipped`) when the image cannot be decoded."""
        item = self.items[index]
        try:
            img = open_image(item.image_path)
        except (ValueError, Image.DecompressionBombError) as e:
            self._skip(item.line_no, f"image failed to load: {e}")
            return None
        return to_tensor(fit(img, self.buckets[item.template]))[0], item.caption

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str] | None:
        return self.load(index)
