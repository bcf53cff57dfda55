"""A deterministic parser from a shapes image back to its scene, robust to reconstruction blur and colour shifts.

It checks generated (or reconstructed) images against the scene their caption describes:
1. background: the BACKGROUNDS entry nearest to the median of the image's border pixels;
2. labels: each pixel is matched to the blends between the measured border colour and each object colour (see
   `_label_pixels`); it is object when at least half covered by its best colour, and dropped when farther than
   REJECT_DISTANCE from every blend (noise, or a colour outside the palette);
3. objects: 4-connected components of each object colour (union-find over horizontal runs, numpy only), less
   specks (area under MIN_AREA_FRACTION of a cell squared) and slivers (bounding-box fill under MIN_FILL);
4. per object: triangle if its top quarter is much narrower than its bottom quarter; otherwise square or circle
   by how much it fills its corners (see `_classify_shape`); size from the bounding box's larger side over
   min(cell height, cell width) (small 0.4, large 0.8, split at 0.6); position from the bounding box's centre.

Measured on random 1-3 object scenes (tests/test_scene_parser.py and a wider sweep): 100% of ground-truth
renders at 64 to 256 px; 100% after a 3x3 box blur and N(0, 4) or N(0, 8) noise at 96 to 256 px. The limit is
small objects under heavy blur: with a 7x7 box blur ~95% at 128 px, and at 64-96 px (small objects 8-13 px)
a 5x5 blur already turns many small squares and triangles into circles.

Legend: H, W image height and width; P the object colours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from infinity.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SIZE_FRACTIONS, Scene, ShapeObject

REJECT_DISTANCE = 60.0  # RGB distance from every background-to-colour blend beyond which a pixel is noise
MIN_AREA_FRACTION = 0.02  # components smaller than this share of min(cell_h, cell_w)^2 are noise
MIN_FILL = 0.3  # components filling less of their bounding box are rims or slivers (a triangle fills 0.5)
TRIANGLE_TAPER = 0.6  # top-quarter width / bottom-quarter width below this: triangle (ideal 1/7, others 1)
SIZE_SPLIT = sum(SIZE_FRACTIONS.values()) / 2  # 0.6: between small and large extents

_COLOR_NAMES = tuple(COLORS)
_CELL_OF = {cell: phrase for phrase, cell in POSITIONS.items()}


@dataclass(frozen=True)
class ParsedScene:
    """What the parser sees: the background name and one ShapeObject per object found (in no special order)."""

    background: str
    objects: tuple[ShapeObject, ...]


@dataclass
class _Component:
    """One connected component, summarised from its runs: per-row pixel counts and extents along the axes and
    the diagonals (u = x + y, v = x - y; all bounds inclusive)."""

    color: str
    rows: dict[int, int]
    top: int
    bottom: int
    left: int
    right: int
    u_min: int
    u_max: int
    v_min: int
    v_max: int

    @classmethod
    def of_run(cls, color: str, y: int, start: int, end: int) -> _Component:
        """A component of one run: row y, columns start to end (exclusive)."""
        return cls(color, {y: end - start}, y, y, start, end - 1, start + y, end - 1 + y, start - y, end - 1 - y)

    def add_run(self, y: int, start: int, end: int) -> None:
        self.rows[y] = self.rows.get(y, 0) + end - start
        self.top, self.bottom = min(self.top, y), max(self.bottom, y)
        self.left, self.right = min(self.left, start), max(self.right, end - 1)
        self.u_min, self.u_max = min(self.u_min, start + y), max(self.u_max, end - 1 + y)
        self.v_min, self.v_max = min(self.v_min, start - y), max(self.v_max, end - 1 - y)

    @property
    def area(self) -> int:
        return sum(self.rows.values())

    @property
    def hw(self) -> tuple[int, int]:
        return self.bottom - self.top + 1, self.right - self.left + 1

    def fill(self) -> float:
        """Share of the bounding box covered: square 1, circle pi/4, triangle 1/2."""
        h, w = self.hw
        return self.area / (h * w)

    def taper(self) -> float:
        """Mean width of the top quarter of rows over that of the bottom quarter: triangle ~1/7, others ~1."""
        h, _ = self.hw
        quarter = max(1, h // 4)
        top = sum(self.rows.get(y, 0) for y in range(self.top, self.top + quarter))
        bottom = sum(self.rows.get(y, 0) for y in range(self.bottom - quarter + 1, self.bottom + 1))
        return top / max(bottom, 1)

    def diagonal_extent(self) -> float:
        """Extent along the diagonals over the extent along the axes: square sqrt(2), circle 1 (triangle 1.06).

        Unlike the fill, it barely moves when blur rounds a square's corners by a pixel or two or a noise pixel
        widens the bounding box.
        """
        h, w = self.hw
        diagonal = (self.u_max - self.u_min + self.v_max - self.v_min + 2) / 2 / np.sqrt(2)
        return diagonal / ((h + w) / 2)


def _label_pixels(img_HW3: np.ndarray) -> tuple[str, np.ndarray]:
    """Background name and a label map: 0 background or rejected, 1 + i for object colour i.

    A blurred edge pixel is a blend a * colour + (1 - a) * background, which can lie nearer to another palette
    colour than to either of its own (orange on black passes near red). So each pixel is matched to the
    segment from the background to each object colour: its coverage a is the projection onto the segment
    (clamped to [0, 1]) and its residual the distance to that point. The pixel takes the colour of least
    residual, and counts as object when a >= 1/2 (the blurred edge's midpoint, where the crisp edge was).
    """
    border = np.concatenate([img_HW3[0], img_HW3[-1], img_HW3[:, 0], img_HW3[:, -1]]).astype(np.float32)
    border_rgb = np.median(border, axis=0)
    background = min(BACKGROUNDS, key=lambda name: np.linalg.norm(border_rgb - BACKGROUNDS[name]))
    seg_P3 = np.array(list(COLORS.values()), dtype=np.float32) - border_rgb  # background -> colour
    x_HW3 = img_HW3.astype(np.float32) - border_rgb
    dot_HWP, seg2_P = x_HW3 @ seg_P3.T, np.maximum((seg_P3**2).sum(-1), 1.0)  # > 0 even on an object-coloured border
    a_HWP = np.clip(dot_HWP / seg2_P, 0.0, 1.0)
    residual2_HWP = (x_HW3**2).sum(-1, keepdims=True) - 2 * a_HWP * dot_HWP + a_HWP**2 * seg2_P  # |x - a s|^2
    best_HW = residual2_HWP.argmin(axis=-1)
    a_HW = np.take_along_axis(a_HWP, best_HW[..., None], axis=-1)[..., 0]
    residual2_HW = np.take_along_axis(residual2_HWP, best_HW[..., None], axis=-1)[..., 0]
    labels_HW = best_HW + 1
    labels_HW[(a_HW < 0.5) | (residual2_HW > REJECT_DISTANCE**2)] = 0
    return background, labels_HW


def _components(labels_HW: np.ndarray) -> list[_Component]:
    """4-connected components of equal non-zero labels, by union-find over each row's runs."""
    H, W = labels_HW.shape
    # Runs of equal labels, all rows at once: a -1 column after each row keeps runs from crossing rows.
    flat = np.concatenate([labels_HW, np.full((H, 1), -1, labels_HW.dtype)], axis=1).ravel()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1])
    ends = np.concatenate([starts[1:], [flat.size]])
    keep = flat[starts] > 0
    rows, cols = np.divmod(starts[keep], W + 1)
    runs = list(zip(rows.tolist(), cols.tolist(), (cols + ends[keep] - starts[keep]).tolist(),
                    flat[starts[keep]].tolist()))  # (row, start, end exclusive, label), row-major
    row_runs: list[list[int]] = [[] for _ in range(H)]  # run ids of each row, by start column
    for k, (y, _, _, _) in enumerate(runs):
        row_runs[y].append(k)

    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, H):
        above, here = row_runs[y - 1], row_runs[y]
        i = j = 0
        while i < len(above) and j < len(here):  # both lists are sorted by start column
            _, s1, e1, l1 = runs[above[i]]
            _, s2, e2, l2 = runs[here[j]]
            if s1 < e2 and s2 < e1 and l1 == l2:  # overlapping columns: vertically adjacent
                parent[find(here[j])] = find(above[i])
            if e1 <= e2:
                i += 1
            else:
                j += 1

    components: dict[int, _Component] = {}
    for k, (y, s, e, label) in enumerate(runs):
        root = find(k)
        if root not in components:
            components[root] = _Component.of_run(_COLOR_NAMES[label - 1], y, s, e)
        else:
            components[root].add_run(y, s, e)
    return list(components.values())


def _classify_shape(c: _Component) -> str:
    """Triangle if it tapers upwards; else square or circle by two corner measures (fill and diagonal extent),
    each scaled so 0 is a circle and 1 a square, averaged."""
    if c.taper() < TRIANGLE_TAPER:
        return "triangle"
    fill_score = (c.fill() - np.pi / 4) / (1 - np.pi / 4)
    diagonal_score = (c.diagonal_extent() - 1) / (np.sqrt(2) - 1)
    return "square" if (fill_score + diagonal_score) / 2 > 0.5 else "circle"


def parse_image(img: np.ndarray) -> ParsedScene:
    """The background and objects seen in an (H, W, 3) uint8 RGB image (a PIL image works too)."""
    img_HW3 = np.asarray(img)
    if img_HW3.ndim != 3 or img_HW3.shape[2] != 3 or min(img_HW3.shape[:2]) < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image of at least 3x3 pixels, got shape {img_HW3.shape}")
    H, W = img_HW3.shape[:2]
    cell_h, cell_w = H / 3, W / 3
    cell = min(cell_h, cell_w)
    background, labels_HW = _label_pixels(img_HW3)
    objects = []
    for c in _components(labels_HW):
        if c.area < max(4.0, MIN_AREA_FRACTION * cell**2) or c.fill() < MIN_FILL:
            continue
        size = "large" if max(c.hw) / cell > SIZE_SPLIT else "small"
        cy, cx = (c.top + c.bottom + 1) / 2, (c.left + c.right + 1) / 2
        row, col = min(2, int(cy / cell_h)), min(2, int(cx / cell_w))
        objects.append(ShapeObject(_classify_shape(c), c.color, size, _CELL_OF[row, col]))
    return ParsedScene(background, tuple(objects))


def _sort_key(o: ShapeObject) -> tuple[str, str, str, str]:
    return o.position, o.shape, o.color, o.size


def scene_matches(parsed: ParsedScene, scene: Scene) -> bool:
    """Every object of the scene found exactly (colour, shape, size, position), nothing extra, and the
    background right when the scene's caption names it."""
    if scene.name_background and parsed.background != scene.background:
        return False
    return sorted(parsed.objects, key=_sort_key) == sorted(scene.objects, key=_sort_key)


def fails_only_by_extras(parsed: ParsedScene, scene: Scene) -> bool:
    """Every object of the scene found exactly and the background right, yet something more is there (a stray
    speck of another colour, a second shape): the failures of `scene_matches` that extra pixels alone cause."""
    if scene.name_background and parsed.background != scene.background:
        return False
    found = list(parsed.objects)
    for want in scene.objects:
        if want not in found:
            return False
        found.remove(want)
    return bool(found)


ATTRIBUTES = ("position", "color", "shape", "size")


def object_recall(parsed: ParsedScene, scene: Scene) -> dict[str, float]:
    """Partial credit where `scene_matches` is all or nothing: the share of the scene's objects that have a parsed
    object in their cell ("position"), and one in their cell with their colour, shape or size."""
    hits = dict.fromkeys(ATTRIBUTES, 0)
    for want in scene.objects:
        here = [o for o in parsed.objects if o.position == want.position]
        hits["position"] += bool(here)
        for attribute in ATTRIBUTES[1:]:
            hits[attribute] += any(getattr(o, attribute) == getattr(want, attribute) for o in here)
    return {a: hits[a] / len(scene.objects) for a in ATTRIBUTES}


def score(images: Iterable[np.ndarray], scenes: Sequence[Scene]) -> dict[str, float]:
    """Share of images whose parse matches their scene: "all", and per number of objects ("1", "2", ...)."""
    images = list(images)
    if len(images) != len(scenes):
        raise ValueError(f"got {len(images)} images for {len(scenes)} scenes")
    hits: dict[str, list[bool]] = {"all": []}
    for img, scene in zip(images, scenes):
        ok = scene_matches(parse_image(img), scene)
        hits["all"].append(ok)
        hits.setdefault(str(len(scene.objects)), []).append(ok)
    return {key: float(np.mean(v)) if v else 0.0 for key, v in sorted(hits.items())}
