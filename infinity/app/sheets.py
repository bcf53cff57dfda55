"""Contact sheets: every scale of a series side by side in one image, each tile in the output's aspect ratio and
labelled with its grid, rows for several series.

One image instead of a gallery: a gallery crops its thumbnails to squares, cuts long captions and changes its
tiling when the number of items grows; a sheet is laid out once for all K scales (the tiles not computed yet
drawn as empty frames), so the page does not move while a run streams in and nothing is cropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TILE_HEIGHT = 160  # px of every tile; its width follows the output's aspect ratio
MAX_COLUMNS = 7  # tiles per row; longer series wrap (13 scales of the 1M schedules: two rows)
GAP = 6
LABEL_HEIGHT = 20
TITLE_WIDTH = 150  # the left margin holding each row's title, when there are titles
BACKGROUND, FRAME, TEXT = (255, 255, 255), (200, 200, 200), (40, 40, 40)


@dataclass(frozen=True)
class SheetLayout:
    """Where each tile goes: tile size (w, h), columns, rows of tiles per series and the sheet's size (w, h)."""

    tile: tuple[int, int]
    columns: int
    rows_per_series: int
    series: int
    left: int  # width of the title margin

    @property
    def size(self) -> tuple[int, int]:
        w = self.left + self.columns * (self.tile[0] + GAP) + GAP
        h = self.series * self.rows_per_series * (self.tile[1] + LABEL_HEIGHT + GAP) + GAP
        return w, h

    def box(self, series: int, index: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile `index` of row `series`."""
        row, col = series * self.rows_per_series + index // self.columns, index % self.columns
        x = self.left + GAP + col * (self.tile[0] + GAP)
        y = GAP + row * (self.tile[1] + LABEL_HEIGHT + GAP) + LABEL_HEIGHT
        return x, y, x + self.tile[0], y + self.tile[1]


def layout(image_hw: tuple[int, int], tiles: int, series: int = 1, titled: bool = False,
           tile_height: int = TILE_HEIGHT) -> SheetLayout:
    """The layout of `series` rows of `tiles` tiles for images of size `image_hw` = (H, W)."""
    H, W = image_hw
    tile = (max(1, round(tile_height * W / H)), tile_height)
    columns = min(tiles, MAX_COLUMNS)
    return SheetLayout(tile, columns, -(-tiles // columns), series, TITLE_WIDTH if titled else 0)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def contact_sheet(
    rows: Sequence[Sequence[Image.Image | None]],
    labels: Sequence[Sequence[str]],
    image_hw: tuple[int, int],
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """One image of `rows` (series) of tiles, all of size image_hw's aspect ratio; `labels[r][i]` above tile i of
    row r (every row has its full list of labels, so the sheet has its final layout from the first update);
    None tiles are empty frames (not computed yet). Tiles are scaled with nearest neighbour, so a coarse scale
    shows its cells."""
    n = max(len(row_labels) for row_labels in labels)
    lay = layout(image_hw, n, len(rows), titles is not None)
    sheet = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    small, big = _font(12), _font(14)
    for r, row in enumerate(rows):
        if len(row) > len(labels[r]):
            raise ValueError(f"row {r} has {len(row)} tiles, more than its {len(labels[r])} labels")
        if titles is not None:
            _, top, _, bottom = lay.box(r, 0)
            draw.multiline_text((GAP, (top + bottom) // 2), titles[r], fill=TEXT, font=big, anchor="lm")
        for i, label in enumerate(labels[r]):
            x0, y0, x1, y1 = lay.box(r, i)
            draw.text((x0, y0 - LABEL_HEIGHT + 3), label, fill=TEXT, font=small)
            tile = row[i] if i < len(row) else None
            if tile is None:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=FRAME)
            else:
                sheet.paste(tile.convert("RGB").resize(lay.tile, Image.Resampling.NEAREST), (x0, y0))
    return sheet
