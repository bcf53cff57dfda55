"""A procedural captioned "shapes" dataset, rendered on the fly and deterministic by seed.

A scene is one to three coloured shapes on a plain background, each in its own cell of a 3x3 grid; its caption
reads as people write ("a small blue square in the center and a large green triangle on the right"). The
vocabulary below is shared with the scene parser (`infinity.data.scene_parser`), the evaluator and the app.

Rendering choices (so images are easy to learn and to parse back):
- the grid's cells are thirds of the image's height and width, at any size and aspect ratio; an object is
  centred in its cell and spans 0.8 (large) or 0.4 (small) of min(cell height, cell width), i.e. 34 or 17 px at
  128x128;
- circle, axis-aligned square, and an upward triangle whose base and height both equal the object size (so
  every shape fills a square bounding box; the triangle fills half of it, the circle pi/4, the square all);
- crisp edges, no anti-aliasing: a pixel takes the object's colour when its centre is inside the shape.

Held-out split: a fixed share (HELD_OUT_FRACTION) of object combinations never appears in training. A scene is
held out when the SHA-256 of its sorted objects falls in that share (a stable hash, unlike Python's salted
`hash`), so for one object it is ~10% of the (shape, colour, size, position) tuples and for several objects ~10%
of the combinations. Backgrounds do not enter the rule. Training resamples until it draws a scene not held out.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Phrase -> (row, col) of the 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "at the top left": (0, 0),
    "at the top": (0, 1),
    "at the top right": (0, 2),
    "on the left": (1, 0),
    "in the center": (1, 1),
    "on the right": (1, 2),
    "at the bottom left": (2, 0),
    "at the bottom": (2, 1),
    "at the bottom right": (2, 2),
}
# Plain backgrounds, all far (>= 90 in RGB distance) from every object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
# Object extent as a fraction of min(cell height, cell width).
SIZE_FRACTIONS: dict[str, float] = {"small": 0.4, "large": 0.8}

HELD_OUT_FRACTION = 0.1
BACKGROUND_CAPTION_PROB = 0.3  # how often a caption names the background
DEFAULT_BACKGROUND = "black"  # what `render` paints when a scene leaves the background open
DEFAULT_HW = (128, 128)  # the size `ShapesDataset[index]` renders at
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ShapeObject:
    """One shape: names from SHAPES, COLORS, SIZES and POSITIONS."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, vocabulary, what in ((self.shape, SHAPES, "shape"), (self.color, COLORS, "color"),
                                        (self.size, SIZES, "size"), (self.position, POSITIONS, "position")):
            if value not in vocabulary:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(vocabulary)}")

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.position}"


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells on a background.

    background:      a BACKGROUNDS name, or None when unknown (a parsed caption that does not name it).
    name_background: whether the caption names the background (and so whether an evaluation checks it).
    """

    objects: tuple[ShapeObject, ...]
    background: str | None = DEFAULT_BACKGROUND
    name_background: bool = False

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        if not objects:
            raise ValueError("a scene needs at least one object")
        positions = [o.position for o in objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"objects must occupy distinct positions, got {positions}")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose one of {', '.join(BACKGROUNDS)}")
        if self.name_background and self.background is None:
            raise ValueError("a caption can only name a known background")
        object.__setattr__(self, "objects", objects)


# ---- captions -------------------------------------------------------------------------------------------------


def caption(scene: Scene) -> str:
    """The scene in words: "a large red circle at the top left", "a ... and a ...", "a ..., a ... and a ...",
    followed by " on a black background" when the scene names its background."""
    phrases = [o.phrase() for o in scene.objects]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if scene.name_background:
        text += f" on a {scene.background} background"
    return text


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # longest first: "at the top left"


_OBJECT_RE = re.compile(
    rf"a (?P<size>{_alternatives(SIZES)}) (?P<color>{_alternatives(COLORS)}) "
    rf"(?P<shape>{_alternatives(SHAPES)}) (?P<position>{_alternatives(POSITIONS)})"
)
_BACKGROUND_RE = re.compile(r"^(?P<body>.*) on an? (?P<background>\w+) background$")
_SEPARATOR_RE = re.compile(r",? and |, ")


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes (the inverse of `caption`), or None if it is not in the vocabulary.

    Case, surrounding spaces and a final full stop are ignored. Without a background phrase the scene's
    background is None (any background matches).
    """
    text = " ".join(text.lower().split()).rstrip(".")
    background = None
    m = _BACKGROUND_RE.match(text)
    if m:
        text, background = m["body"], m["background"]
        if background not in BACKGROUNDS:
            return None
    objects = []
    for part in _SEPARATOR_RE.split(text):
        m = _OBJECT_RE.fullmatch(part)
        if not m:
            return None
        objects.append(ShapeObject(m["shape"], m["color"], m["size"], m["position"]))
    if len({o.position for o in objects}) != len(objects):
        return None
    return Scene(tuple(objects), background, name_background=background is not None)


# ---- rendering ------------------------------------------------------------------------------------------------


def _shape_mask(shape: str, dy_H1: np.ndarray, dx_1W: np.ndarray, s: float) -> np.ndarray:
    """Pixels whose centre (offset dy, dx from the object's centre) is inside a shape of extent s."""
    half = s / 2
    if shape == "circle":
        return dy_H1**2 + dx_1W**2 <= half**2
    if shape == "square":
        return (np.abs(dy_H1) <= half) & (np.abs(dx_1W) <= half)
    # Triangle: apex at the top centre, base along the bottom; half-width grows from 0 to s/2 down the height.
    return (np.abs(dy_H1) <= half) & (np.abs(dx_1W) <= (dy_H1 + half) / 2)


def render(scene: Scene, height: int, width: int) -> np.ndarray:
    """The scene as an (H, W, 3) uint8 RGB image, at any size and aspect ratio."""
    if height < 3 or width < 3:
        raise ValueError(f"image must be at least 3x3 pixels, got {height}x{width}")
    img_HW3 = np.empty((height, width, 3), dtype=np.uint8)
    img_HW3[:] = BACKGROUNDS[scene.background or DEFAULT_BACKGROUND]
    cell_h, cell_w = height / 3, width / 3
    ys_H1 = np.arange(height, dtype=np.float64)[:, None] + 0.5  # pixel centres
    xs_1W = np.arange(width, dtype=np.float64)[None, :] + 0.5
    for o in scene.objects:
        row, col = POSITIONS[o.position]
        cy, cx = (row + 0.5) * cell_h, (col + 0.5) * cell_w
        s = SIZE_FRACTIONS[o.size] * min(cell_h, cell_w)
        img_HW3[_shape_mask(o.shape, ys_H1 - cy, xs_1W - cx, s)] = COLORS[o.color]
    return img_HW3


# ---- held-out split and sampling ------------------------------------------------------------------------------


def _unit_hash(*parts) -> float:
    """A stable number in [0, 1) from the parts' text (SHA-256, the same in every process and Python version)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _object_key(o: ShapeObject) -> str:
    return f"{o.shape}/{o.color}/{o.size}/{o.position}"


def is_held_out(scene: Scene) -> bool:
    """Whether the scene's combination of objects (order and background aside) is kept out of training."""
    return _unit_hash("heldout", *sorted(_object_key(o) for o in scene.objects)) < HELD_OUT_FRACTION


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _draw_scene(rng: random.Random, num_objects: int, background_caption_prob: float) -> Scene:
    positions = rng.sample(list(POSITIONS), num_objects)
    objects = tuple(ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), p)
                    for p in positions)
    background = rng.choice(list(BACKGROUNDS))
    return Scene(objects, background, name_background=rng.random() < background_caption_prob)


def sample_scene(rng: random.Random, num_objects: int, split: str = "train", *,
                 background_caption_prob: float = BACKGROUND_CAPTION_PROB) -> Scene:
    """A random scene of `num_objects` objects from one split (resampled until it belongs to it)."""
    _check_split(split)
    if not 1 <= num_objects <= len(POSITIONS):
        raise ValueError(f"num_objects must be in 1..{len(POSITIONS)}, got {num_objects}")
    while True:
        scene = _draw_scene(rng, num_objects, background_caption_prob)
        if is_held_out(scene) == (split == "heldout"):
            return scene


def held_out_scenes(num_objects: int, count: int, seed: int = 0, *,
                    background_caption_prob: float = BACKGROUND_CAPTION_PROB) -> list[Scene]:
    """A fixed list of `count` distinct held-out scenes (distinct combinations of objects) for evaluation."""
    rng = random.Random(_unit_hash("held_out_scenes", num_objects, seed))
    if num_objects == 1:
        # Few single objects are held out (~32 of 324), so take them all in a seeded order.
        pool = [ShapeObject(shape, color, size, position) for shape in SHAPES for color in COLORS
                for size in SIZES for position in POSITIONS]
        pool = [o for o in pool if is_held_out(Scene((o,)))]
        if count > len(pool):
            raise ValueError(f"only {len(pool)} single-object scenes are held out, asked for {count}")
        rng.shuffle(pool)
        return [Scene((o,), rng.choice(list(BACKGROUNDS)), rng.random() < background_caption_prob)
                for o in pool[:count]]
    scenes, seen = [], set()
    while len(scenes) < count:
        scene = sample_scene(rng, num_objects, "heldout", background_caption_prob=background_caption_prob)
        key = tuple(sorted(_object_key(o) for o in scene.objects))
        if key not in seen:
            seen.add(key)
            scenes.append(scene)
    return scenes


class ShapesDataset:
    """Map-style captioned shapes: item `index` is the same scene in every process, run and call order.

    split:                    "train" (never a held-out combination) or "heldout" (only those).
    seed:                     selects a different stream of scenes.
    num_objects, weights:     how many objects a scene has, drawn with these relative weights (uniform if None).
    background_caption_prob:  how often the caption names the background.
    length:                   nominal size for samplers; every index in [0, length) is a valid item.
    """

    def __init__(self, split: str = "train", seed: int = 0, num_objects: Sequence[int] = (1, 2, 3),
                 weights: Sequence[float] | None = None,
                 background_caption_prob: float = BACKGROUND_CAPTION_PROB, length: int = 1_000_000):
        _check_split(split)
        if not num_objects or any(not 1 <= n <= len(POSITIONS) for n in num_objects):
            raise ValueError(f"num_objects must be counts in 1..{len(POSITIONS)}, got {num_objects}")
        if weights is not None and (len(weights) != len(num_objects) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights must be one non-negative number per entry of num_objects, got {weights}")
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.split = split
        self.seed = seed
        self.num_objects = tuple(num_objects)
        self.weights = None if weights is None else tuple(weights)
        self.background_caption_prob = background_caption_prob
        self.length = length

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        """The scene of item `index` (independent of image size)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} items")
        rng = random.Random(_unit_hash("shapes", self.split, self.seed, index))
        n = rng.choices(self.num_objects, weights=self.weights)[0]
        return sample_scene(rng, n, self.split, background_caption_prob=self.background_caption_prob)

    def sample(self, index: int, height: int, width: int) -> tuple[torch.Tensor, str, Scene]:
        """(image (3, H, W) float in [-1, 1], caption, scene) of item `index` rendered at height x width."""
        scene = self.scene(index)
        img_HW3 = render(scene, height, width)
        # The same arithmetic as infinity.images.to_tensor, in numpy (torch's strided uint8 -> float copy is slow).
        img_3HW = torch.from_numpy(np.ascontiguousarray(img_HW3.transpose(2, 0, 1), dtype=np.float32) / 255 * 2 - 1)
        return img_3HW, caption(scene), scene

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, Scene]:
        return self.sample(index, *DEFAULT_HW)

