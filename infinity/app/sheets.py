"""Contact sheets: every scale of a series side by side in one image, each tile in the output's aspect ratio and
labelled with its grid, rows for several series.

One image instead of a gallery: a gallery crops its thumbnails to squares, cuts long captions and changes its
tiling when the number of items grows; a sheet is laid out once for all K scales (the tiles not computed yet
drawn as empty frames), so the page does not move while a run streams in and nothing is cropped.

Legibility: a page about 1,280 px wide shows a sheet of up to ROW_WIDTH + TITLE_WIDTH px at no less than 0.8 of
its size, so labels drawn at LABEL_FONT_SIZE stay above 12 CSS px. The page must scale a sheet smoothly: nearest
neighbour scaling below 1:1 drops rows and columns of the letters ("dB" reads "d3").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TILE_SIDE = 160  # px of every tile's shorter side; the other follows the output's aspect ratio
MAX_COLUMNS = 8  # tiles per row: the input and the embedded model's 7 scales fit on one row
GAP = 6
ROW_WIDTH = MAX_COLUMNS * (TILE_SIDE + GAP)  # a row of wider tiles holds fewer of them
LABEL_FONT_SIZE = 16  # px, as drawn in the sheet
LABEL_LINES = 2  # a label wraps onto at most this many lines above its tile
LINE_HEIGHT = 20
LABEL_HEIGHT = LABEL_LINES * LINE_HEIGHT + 4
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


def layout(image_hw: tuple[int, int], tiles: int, series: int = 1, titled: bool = False) -> SheetLayout:
    """The layout of `series` rows of `tiles` tiles for images of size `image_hw` = (H, W). A series longer than
    a row wraps into rows of equal length (13 scales: 7 and 6), so no tile, the last one least, sits alone."""
    H, W = image_hw
    tile = (round(TILE_SIDE * W / H), TILE_SIDE) if W >= H else (TILE_SIDE, round(TILE_SIDE * H / W))
    per_row = max(1, min(MAX_COLUMNS, ROW_WIDTH // (tile[0] + GAP)))
    rows = -(-tiles // per_row)
    return SheetLayout(tile, -(-tiles // rows), rows, series, TITLE_WIDTH if titled else 0)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """`text` in lines no wider than `width` px where its words allow. It breaks first between the parts that
    " · " separates ("scale 1: 1x1 · 12.8 dB": a number stays with its unit), dropping the dot there, and at
    spaces only within a part too wide for a line."""
    lines: list[str] = []
    for p, part in enumerate(text.split(" · ")):
        for w, word in enumerate([part] if font.getlength(part) <= width else part.split(" ")):
            joined = f"{lines[-1]}{' · ' if p and not w else ' '}{word}" if lines else word
            if lines and font.getlength(joined) <= width:
                lines[-1] = joined
            else:
                lines.append(word)
    return lines


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
    font = _font(LABEL_FONT_SIZE)
    for r, row in enumerate(rows):
        if len(row) > len(labels[r]):
            raise ValueError(f"row {r} has {len(row)} tiles, more than its {len(labels[r])} labels")
        if titles is not None:
            _, top, _, bottom = lay.box(r, 0)
            draw.multiline_text((GAP, (top + bottom) // 2), titles[r], fill=TEXT, font=font, anchor="lm")
        for i, label in enumerate(labels[r]):
            x0, y0, x1, y1 = lay.box(r, i)
            lines = wrap(label, font, x1 - x0)
            if len(lines) > LABEL_LINES:
                raise ValueError(f"label {label!r} needs {len(lines)} lines at {x1 - x0} px; at most {LABEL_LINES}")
            draw.multiline_text((x0, y0 - LABEL_HEIGHT + 2), "\n".join(lines), fill=TEXT, font=font,
                                spacing=LINE_HEIGHT - LABEL_FONT_SIZE)
            tile = row[i] if i < len(row) else None
            if tile is None:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=FRAME)
            else:
                sheet.paste(tile.convert("RGB").resize(lay.tile, Image.Resampling.NEAREST), (x0, y0))
    return sheet
