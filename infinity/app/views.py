"""Pure functions from what the sampler and the tokenizer produce to what the app shows: images and plot tables.

Legend: B batch (always 1 here), d bits per token, h/w one scale's token grid. Images are PIL RGB; values in
[0, 1] are turned into colours with a fixed perceptual colormap (dark = low, bright = high), the same everywhere.
Nothing here calls a model or imports Gradio, so the tests check every view on hand-made tensors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..eval.diversity import VISIBLE_DIFFERENCE, mean_pixel_difference

DISPLAY_MIN_SIDE = 256  # small images (our tiny models make 32 px ones) are enlarged to this, pixels kept square

# Anchors of matplotlib's "inferno" (black -> purple -> orange -> pale yellow), linearly interpolated.
_INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float32,
)


def colormap(values_hw: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN as 0) -> uint8 (h, w, 3) colours."""
    v = np.nan_to_num(np.clip(values_hw.astype(np.float32), 0.0, 1.0)) * (len(_INFERNO) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_INFERNO) - 2)
    t = (v - lo)[..., None]
    return np.round(_INFERNO[lo] * (1 - t) + _INFERNO[lo + 1] * t).astype(np.uint8)


def enlarge(img: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """`img` scaled up by the smallest integer factor that makes its shorter side >= min_side, nearest neighbour
    (every pixel becomes a crisp square); images already that large are returned as they are."""
    factor = math.ceil(min_side / min(img.size))
    if factor <= 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def upscale_nearest(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` at `size` = (width, height), nearest neighbour, so a coarse grid shows its cells."""
    return img if img.size == tuple(size) else img.resize(tuple(size), Image.Resampling.NEAREST)


def token_entropy(probs_Bhwd: torch.Tensor) -> np.ndarray:
    """Mean binary entropy (bits, in [0, 1]) of each token's predicted bits: 0 where the model is sure of every bit,
    1 where every bit is a coin flip. (h, w) float32, from p(bit = 1) of the first image of the batch."""
    p = probs_Bhwd[0].detach().float().cpu().clamp(1e-7, 1 - 1e-7)
    h_bits = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))  # (h, w, d)
    return h_bits.mean(dim=-1).numpy()


def entropy_overlay(entropy_hw: np.ndarray, image: Image.Image, alpha: float = 0.6) -> Image.Image:
    """The entropy map coloured, upscaled (nearest: one square per token) to the image and blended over it."""
    heat = Image.fromarray(colormap(entropy_hw))
    heat = upscale_nearest(heat, image.size)
    return Image.blend(image.convert("RGB"), heat, alpha)


def bits_image(bits_Bhwd: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """One scale's bits (the quantized residual R_k) as colours: the d bits of a token in three groups, the mean
    sign of each group as R, G, B (0 -> black, all ones -> full). Upscaled (nearest) to `size` when given."""
    signs_hwd = bits_Bhwd[0].detach().cpu().float().numpy() * 2 - 1
    groups = np.array_split(np.arange(signs_hwd.shape[-1]), 3)
    rgb = np.stack([signs_hwd[..., g].mean(axis=-1) if len(g) else np.zeros(signs_hwd.shape[:2]) for g in groups], -1)
    img = Image.fromarray(np.round((rgb + 1) * 127.5).astype(np.uint8))
    return upscale_nearest(img, size) if size else img


def residual_image(before: Image.Image | None, after: Image.Image) -> tuple[Image.Image, float]:
    """What one scale added in image space: after - before as a signed map (grey 0, brighter = added, darker =
    removed), stretched so the largest change is full scale. `before` None is a black (zero-feature) start.
    Returns the image and the largest absolute change (0..255)."""
    a = np.asarray(after.convert("RGB"), dtype=np.float32)
    b = np.zeros_like(a) if before is None else np.asarray(before.convert("RGB"), dtype=np.float32)
    delta = a - b
    peak = float(np.abs(delta).max())
    scaled = 127.5 + 127.5 * delta / max(peak, 1.0)
    return Image.fromarray(np.round(scaled).clip(0, 255).astype(np.uint8)), peak


DIFFERENCE_FULL_SCALE = 64.0  # |difference| (0..255) drawn at full brightness: a fixed scale, so tiny ones stay dark


def difference_map(a: Image.Image, b: Image.Image) -> tuple[Image.Image, float]:
    """|a - b| averaged over the colour channels, coloured on a fixed scale (black = equal, full brightness =
    DIFFERENCE_FULL_SCALE or more). Returns the map and the mean absolute difference (0..255)."""
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} and {b.size}")
    diff = np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean(-1)
    return Image.fromarray(colormap(diff / DIFFERENCE_FULL_SCALE)), float(diff.mean())


def per_scale_table(series: dict[str, Sequence[float]], y: str):
    """Long-form table for a line plot: one row per (series, scale), scales numbered from 1 as text (a plot then
    draws one tick per scale, in the order `scale_labels` gives).

    Columns: "scale", `y`, "series". pandas comes with Gradio; imported here so importing views stays light."""
    import pandas as pd

    rows = [
        {"scale": str(k + 1), y: round(float(v), 3), "series": name}
        for name, values in series.items()
        for k, v in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=["scale", y, "series"])


# Vega's default category colours, in its order.
SERIES_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"]


def series_colors(names: Sequence[str], order: Sequence[str]) -> dict[str, str]:
    """A colour for each of `names`, fixed by its place in `order` (every series that may appear), so a series
    has the same colour in every plot."""
    return {name: SERIES_COLORS[order.index(name) % len(SERIES_COLORS)] for name in names}


def scale_labels(num_scales: int) -> list[str]:
    """The x values of `per_scale_table`, in plot order."""
    return [str(k + 1) for k in range(num_scales)]


def spread(images: Sequence[Image.Image]) -> str:
    """' · ' and how much images differ from one another (mean |a - b| over every pair, 0..255), saying when that
    is under what counts as visibly different; "" for fewer than two images."""
    if len(images) < 2:
        return ""
    d = mean_pixel_difference([np.asarray(img.convert("RGB")) for img in images])
    alike = f" (under {VISIBLE_DIFFERENCE:g}/255: they look alike)" if d < VISIBLE_DIFFERENCE else ""
    return f" · the images differ from one another by {d:.1f}/255 per pixel on average{alike}"
