"""Scale schedules: which token grid each scale of next-scale prediction uses.

A schedule is the list of K grids (h_k, w_k) that an image's latent is split into, coarse to fine; the
last grid is the full latent. Infinity ships one schedule per aspect-ratio template ("h_div_w", image
height over width) and pixel budget (0.06M, 0.25M, 0.60M, 1M pixels: the first 7, 10, 12 or 13 grids of
the template's 13). The official tokenizers downsample by 16, so a 64x64 last grid is a 1024x1024 image.

The grids below are the official `ratio2hws` table (facts, checked against recorded fixtures in the
tests); portrait templates are stored, landscape ones are their transposes with the key truncated to
three decimals (1/1.333 -> 0.75, 1/1.5 -> 0.666) exactly as the official code names them.

Our own small models build `Schedule` objects directly with their own grids and patch size.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Portrait templates (h/w >= 1): the 13 grids (h, w) of each, coarse to fine.
_PORTRAIT_GRIDS: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)),
}

# Pixel budget name -> number of scales used (a prefix of the template's grids).
BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}

# The temporal size the official code pairs with scale k (images always use t = 1 at inference).
OFFICIAL_T = (1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21)

OFFICIAL_PATCH_SIZE = 16


def _landscape_key(h_div_w: float) -> float:
    return int(1 / h_div_w * 1000) / 1000  # the official truncation, e.g. 1/1.333 -> 0.75


def _all_templates() -> dict[float, tuple[tuple[int, int], ...]]:
    grids: dict[float, tuple[tuple[int, int], ...]] = {}
    for h_div_w, hws in _PORTRAIT_GRIDS.items():
        grids[h_div_w] = hws
        if h_div_w != 1.0:
            grids[_landscape_key(h_div_w)] = tuple((w, h) for h, w in hws)
    return grids


TEMPLATE_GRIDS = _all_templates()
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(TEMPLATE_GRIDS)


def _ratio_name(h_div_w: float) -> str:
    """Width:height name of a template, e.g. 0.75 -> "4:3", 1.333 -> "3:4", 0.571 -> "7:4"."""
    w_over_h = 1 / h_div_w
    for den in range(1, 8):
        num = round(w_over_h * den)
        if num and abs(num / den - w_over_h) < 0.01:
            g = math.gcd(num, den)
            return f"{num // g}:{den // g}"
    raise AssertionError(f"no small ratio for template {h_div_w}")


# Display name (width:height, as people write it) -> template key (height / width).
ASPECT_RATIOS: dict[str, float] = {_ratio_name(r): r for r in H_DIV_W_TEMPLATES}

_NAME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Schedule:
    """The K token grids of one image shape, coarse to fine.

    scales:     (h, w) of each scale's grid; the last one is the full latent.
    patch_size: pixels per latent cell (the tokenizer's downsampling factor).
    h_div_w:    the aspect-ratio template this schedule belongs to (height / width).
    budget:     the official pixel-budget name, or None for a custom schedule.
    """

    scales: tuple[tuple[int, int], ...]
    patch_size: int = OFFICIAL_PATCH_SIZE
    h_div_w: float = 1.0
    budget: str | None = None

    def __post_init__(self) -> None:
        scales = tuple((int(h), int(w)) for h, w in self.scales)
        if not scales:
            raise ValueError("a schedule needs at least one scale")
        if any(h < 1 or w < 1 for h, w in scales):
            raise ValueError(f"scale grids must be positive, got {scales}")
        H, W = scales[-1]
        if any(h > H or w > W for h, w in scales):
            raise ValueError(f"the last scale must be the largest grid, got {scales}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        object.__setattr__(self, "scales", scales)

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.scales[-1]

    @property
    def pixel_hw(self) -> tuple[int, int]:
        """Image (height, width) in pixels."""
        H, W = self.latent_hw
        return H * self.patch_size, W * self.patch_size

    @property
    def seq_len(self) -> int:
        """Tokens over all scales (the 1x1 first scale is the SOS position of the transformer)."""
        return sum(h * w for h, w in self.scales)

    def thw(self) -> list[tuple[int, int, int]]:
        """The (t=1, h, w) triples the official code passes around at inference."""
        return [(1, h, w) for h, w in self.scales]


def nearest_template(h_div_w: float) -> float:
    """The template closest to a height/width ratio (linear distance, as the official bucketing)."""
    if not (isinstance(h_div_w, (int, float)) and math.isfinite(h_div_w) and h_div_w > 0):
        raise ValueError(f"height/width ratio must be a positive number, got {h_div_w!r}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(t - h_div_w))


def parse_aspect_ratio(aspect_ratio: str | float) -> float:
    """Height/width ratio of "W:H" (e.g. "16:9" is landscape) or of a number (taken as height/width)."""
    if isinstance(aspect_ratio, (int, float)) and not isinstance(aspect_ratio, bool):
        return float(aspect_ratio)
    if isinstance(aspect_ratio, str):
        m = _NAME_RE.match(aspect_ratio)
        if m and float(m.group(1)) > 0 and float(m.group(2)) > 0:
            return float(m.group(2)) / float(m.group(1))
    raise ValueError(
        f"aspect ratio must be 'width:height' like '16:9' or a height/width number, got {aspect_ratio!r}; "
        f"templates: {', '.join(ASPECT_RATIOS)}"
    )


def largest_grid(h_div_w: float) -> tuple[int, int]:
    """Last grid of the 1M schedule of the nearest template (the official RoPE positions are scaled to it)."""
    return TEMPLATE_GRIDS[nearest_template(h_div_w)][-1]


def get_schedule(aspect_ratio: str | float = "1:1", budget: str = "1M") -> Schedule:
    """The official schedule of the template nearest to `aspect_ratio` at a pixel budget."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown pixel budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    template = nearest_template(parse_aspect_ratio(aspect_ratio))
    grids = TEMPLATE_GRIDS[template][: BUDGETS[budget]]
    return Schedule(scales=grids, patch_size=OFFICIAL_PATCH_SIZE, h_div_w=template, budget=budget)


def official_schedules(budget: str, names: Sequence[str] = tuple(ASPECT_RATIOS)) -> dict[str, Schedule]:
    """The official schedules of the templates `names` (every one by default) at one pixel budget."""
    return {name: get_schedule(name, budget) for name in names}


def square_schedule(pixels: int, patch_size: int) -> Schedule:
    """The official 1:1 grids up to a pixels x pixels image's latent grid, ending at it (patch 8: 128 px gives the
    embedded model's seven scales 1..16, 64 px the claims recipe's five scales 1..8)."""
    if pixels % patch_size:
        raise ValueError(f"{pixels} px is not a multiple of the tokenizer's patch size {patch_size}")
    side = pixels // patch_size
    grids = [(h, w) for h, w in TEMPLATE_GRIDS[1.0] if h < side] + [(side, side)]
    return Schedule(tuple(grids), patch_size)


SHAPES_PATCH = 8  # pixels per latent cell of the shapes models (the embedded model and its tokenizers)


def shapes_schedules(patch_size: int = SHAPES_PATCH) -> dict[str, Schedule]:
    """The shapes models' seven-scale grids (16x16, 16x24 and 24x16 cells at the last) at `patch_size` pixels per
    cell: the embedded model's schedules at 8, and the sizes any of our tokenizer files encodes with."""
    square = square_schedule(16 * patch_size, patch_size).scales
    landscape = [(1, 1), (2, 3), (4, 6), (6, 9), (8, 12), (12, 18), (16, 24)]
    grids = {"1:1": square, "3:2": landscape, "2:3": [(w, h) for h, w in landscape]}
    return {name: Schedule(tuple(g), patch_size, round(g[-1][0] / g[-1][1], 3)) for name, g in grids.items()}


def nearest_schedule(schedules: dict[str, Schedule], h_div_w: float) -> str:
    """The name of the schedule whose image is nearest in shape to `h_div_w` (height / width), in log ratio: the
    resize rule the app and `python -m infinity tokenize` share, so both give an image the same size."""
    if not schedules or not h_div_w > 0:
        raise ValueError(f"need at least one schedule and a positive height / width, got {h_div_w!r}")

    def distance(name: str) -> float:
        H, W = schedules[name].pixel_hw
        return abs(math.log((H / W) / h_div_w))

    return min(schedules, key=distance)
