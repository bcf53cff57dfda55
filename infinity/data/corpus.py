"""An image corpus for training tokenizers on any picture, built from sources a fresh machine can fetch.

    python -m infinity.data.corpus --out data/corpus

Sources (Debian packages, fetched with `apt-get download` and unpacked with `dpkg -x`: nothing is installed):
- photographs from desktop wallpaper packages and from OpenCV's sample pictures, cut into many random crops at
  several scales: at least half of the training images, as in what people upload;
- material textures from game-texture packages (loose files and the images inside .pk3 / .zip archives);
- the Noto Color Emoji glyphs rendered with Pillow, captioned with their Unicode names, on white, a plain colour, a
  gradient or a photo crop;
- the procedural shapes scenes of `infinity.data.shapes`, with their captions.
Whole packages are held out, their crops go to `heldout/` and never to `train/`: `mate-backgrounds` (nature
photographs and abstract artwork) and the natural test photographs of scikit-image and scikit-learn (astronaut,
coffee, cat, coins, grass, gravel, rocket, ...: texture and detail, not smooth wallpapers).

Layout of --out: `train/<source>/*.jpg|png`, `heldout/<source>/*.jpg`, `train.jsonl` (the captioned items in the
official layout: image_path, h_div_w, text) and `manifest.json` (every source with its package version, licence,
files read, files skipped by reason, images written and share of the training corpus). Corrupt, truncated and
tiny files are skipped and counted, never fatal; grayscale, palette and alpha images are converted to RGB
(transparent pixels over a plain background).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import re
import subprocess
import sys
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .folder import IMAGE_SUFFIXES as FOLDER_SUFFIXES

logger = logging.getLogger("infinity.data.corpus")

IMAGE_SUFFIXES = tuple(sorted(FOLDER_SUFFIXES))
ARCHIVE_SUFFIXES = (".pk3", ".zip")
MIN_SIDE = 64  # smaller files are icons or sprites, not pictures
SHORT_SIDE = 192  # crops are stored at this short side: room for the trainer's random resized crops to 128 px
ASPECTS = (1.0, 1.5, 2 / 3)  # height / width of the stored crops: the embedded schedules' 1:1, 2:3, 3:2
MIN_CROP = 128  # px: no crop's short side is smaller (the trainer's largest target), unless the picture's is
Image.MAX_IMAGE_PIXELS = 64_000_000  # the largest wallpapers are 5120x2880; anything far bigger is refused


@dataclass(frozen=True)
class Source:
    """One source of pictures. `package` is a Debian package, `folder` a local folder (tests, own pictures)."""

    name: str
    kind: str  # "photo" (random crops at several scales), "texture" (a few crops), "emoji", "shapes"
    package: str | None = None
    folder: str | None = None
    crops: int = 24  # crops per picture ("photo", "texture"); glyphs or scenes in all ("emoji", "shapes")
    split: str = "train"  # or "heldout": the whole source stays out of training
    files: tuple[str, ...] = ()  # glob patterns (matched from the end of a path) of the pictures to read; () all
    backdrops: tuple[str, ...] = ()  # "emoji": the sources whose training crops may be drawn behind a glyph


OPENCV_PHOTOS = tuple(f"examples/data/{name}" for name in (  # its photographs; not its drawings, text, checkerboards
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
    "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg",
    "graf1.png", "home.jpg", "leuvenA.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
    "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg"))
SKIMAGE_PHOTOS = tuple(f"skimage/data/{name}" for name in (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "rocket.jpg"))

DEFAULT_SOURCES = (  # in build order: the emoji draw the photo sources' crops behind some glyphs
    Source("plasma", "photo", package="plasma-workspace-wallpapers", crops=72),
    Source("ukui", "photo", package="ukui-wallpapers", crops=72),
    Source("lomiri", "photo", package="lomiri-wallpapers-16.04", crops=72),
    Source("opencv", "photo", package="opencv-doc", crops=24, files=OPENCV_PHOTOS),
    Source("openarena", "texture", package="openarena-081-textures", crops=1),
    Source("colobot", "texture", package="colobot-common-textures", crops=2),
    Source("emoji", "emoji", package="fonts-noto-color-emoji", crops=4000, backdrops=("plasma", "ukui", "lomiri")),
    Source("shapes", "shapes", crops=1200),
    Source("mate", "photo", package="mate-backgrounds", crops=6, split="heldout"),
    Source("skimage", "photo", package="python3-skimage", crops=12, split="heldout", files=SKIMAGE_PHOTOS),
    Source("sklearn", "photo", package="python3-sklearn", crops=12, split="heldout", files=("images/*.jpg",)),
)


@dataclass
class Report:
    files: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)


def fetch_package(package: str, debs: Path) -> tuple[Path, str]:
    """Download (once) and unpack (once) a Debian package; -> (its unpacked root, its version)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if result.returncode or not found:
            raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    root = debs / "unpacked" / package
    if not root.is_dir():
        partial = root.with_name(root.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(found[-1]), str(partial)], check=True)
        partial.rename(root)
    return root, found[-1].name.split("_")[1].replace("%3a", ":")


def licences(root: Path) -> list[str]:
    """The licence names its Debian copyright file(s) declare."""
    names: list[str] = []
    for copyright_file in sorted(root.glob("usr/share/doc/*/copyright")):
        for line in copyright_file.read_text(errors="replace").splitlines():
            if line.startswith("License:") and line.split(":", 1)[1].strip() not in names:
                names.append(line.split(":", 1)[1].strip())
    return names or ["see usr/share/doc/*/copyright in the package"]


def _picture_files(root: Path, patterns: tuple[str, ...] = ()) -> list[Path]:
    """Image files below `root` (those matching one of `patterns`, if any); where a folder holds the same picture
    at several resolutions (named WxH, as in KDE wallpapers), only the largest; previews named 'screenshot' are
    left out."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + ARCHIVE_SUFFIXES
                   and (not patterns or any(p.relative_to(root).match(pattern) for pattern in patterns)))
    keep, by_folder = [], {}
    for p in files:
        if p.stem.lower().startswith("screenshot"):
            continue
        if re.fullmatch(r"\d+x\d+", p.stem):
            best = by_folder.get(p.parent)
            if best is None or p.stat().st_size > best.stat().st_size:
                by_folder[p.parent] = p
        else:
            keep.append(p)
    return keep + sorted(by_folder.values())


def _pictures(root: Path, report: Report, patterns: tuple[str, ...] = ()):
    """(name, RGB image) of every readable picture below `root`, archives' members included."""
    for path in _picture_files(root, patterns):
        if path.suffix.lower() in ARCHIVE_SUFFIXES:
            try:
                archive = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError):
                report.files += 1
                report.skipped["corrupt"] += 1
                continue
            with archive:
                for member in sorted(archive.namelist()):
                    if member.lower().endswith(IMAGE_SUFFIXES):
                        yield from _decoded(f"{path.stem}/{member}", lambda m=member: archive.read(m), report)
        else:
            yield from _decoded(path.name, path.read_bytes, report)


def _decoded(name: str, read, report: Report):
    report.files += 1
    try:
        with Image.open(io.BytesIO(read())) as img:
            img.load()
            rgb = to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        report.skipped["corrupt or truncated"] += 1
        return
    if min(rgb.size) < MIN_SIDE:
        report.skipped[f"smaller than {MIN_SIDE} px"] += 1
        return
    yield name, rgb


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB from any mode: grayscale and palette converted, transparency composited over `background`."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def random_crop(img: Image.Image, rng: random.Random, min_side: float) -> Image.Image:
    """A crop of one of ASPECTS whose short side is `min_side`..1 of the largest such crop's (and at least MIN_CROP
    px where the picture allows), stored at SHORT_SIDE."""
    aspect = rng.choice(ASPECTS)
    w, h = img.size
    full_w, full_h = min(w, h / aspect), min(h, w * aspect)
    s = rng.uniform(min(1.0, max(min_side, MIN_CROP / min(full_w, full_h))), 1.0)
    cw, ch = max(1, round(full_w * s)), max(1, round(full_h * s))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = img.crop((left, top, left + cw, top + ch))
    scale = SHORT_SIDE / min(cw, ch)
    if scale < 1:
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC, reducing_gap=3.0)
    return crop


def _crop_source(source: Source, root: Path, out: Path, rng: random.Random, report: Report) -> list[dict]:
    min_side = 0.15 if source.kind == "photo" else 0.5  # photos: details as well as whole views
    for i, (name, img) in enumerate(_pictures(root, report, source.files)):
        for j in range(source.crops):
            random_crop(img, rng, min_side).save(out / f"{i:05d}_{j:02d}.jpg", quality=95)
            report.written += 1
    return []


def _emoji_font(root: Path) -> ImageFont.FreeTypeFont:
    fonts = sorted(root.rglob("NotoColorEmoji*.ttf"))
    if not fonts:
        raise RuntimeError(f"no NotoColorEmoji font below {root}")
    return ImageFont.truetype(str(fonts[0]), 109)  # the only size of its bitmap strikes


def backdrop(size: int, rng: random.Random, photos: list[Path]) -> Image.Image:
    """A square background for a glyph: white, a plain colour, a two-colour gradient at any angle, or (where
    `photos` are given) a crop of one of them, each as likely: uploads show emoji on anything, not only on white."""
    kind = rng.choice(["white", "colour", "gradient", "photo"] if photos else ["white", "colour", "gradient"])
    if kind == "white":
        return Image.new("RGB", (size, size), (255, 255, 255))
    if kind == "colour":
        return Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    if kind == "gradient":
        # Pillow's 256x256 top-to-bottom ramp, turned and cut to its inner square (no empty corners), as the mask
        ramp = Image.linear_gradient("L").rotate(rng.uniform(0, 360), Image.BICUBIC, expand=True)
        inner = 256 / 2**0.5
        left, top = (ramp.width - inner) / 2, (ramp.height - inner) / 2
        mask = ramp.crop((round(left), round(top), round(left + inner), round(top + inner))).resize((size, size))
        a, b = (Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3))) for _ in range(2))
        return Image.composite(a, b, mask)
    with Image.open(rng.choice(photos)) as photo:
        photo = photo.convert("RGB")
    side = min(photo.size)
    left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
    return photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def _emoji_source(source: Source, root: Path, out: Path, rng: random.Random, report: Report,
                  photos: list[Path]) -> list[dict]:
    """Every single-codepoint emoji the font draws, on a random backdrop, captioned by its name."""
    font = _emoji_font(root)

    def render(char: str) -> Image.Image:
        img = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((0, 0), char, font=font, embedded_color=True)
        return img

    missing = render("\ue000").tobytes()  # a private-use codepoint: the font's "no glyph" box
    lines = []
    codepoints = [c for c in list(range(0x2190, 0x2c00)) + list(range(0x1f000, 0x1fb00))
                  if unicodedata.category(chr(c)) == "So"]
    for c in codepoints[: source.crops]:
        report.files += 1
        glyph = render(chr(c))
        if glyph.getbbox() is None or glyph.tobytes() == missing:
            report.skipped["no glyph in the font"] += 1
            continue
        glyph = glyph.crop(glyph.getbbox())
        size = rng.randint(160, 224)
        canvas = backdrop(size, rng, photos)
        scale = rng.uniform(0.45, 0.9) * size / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.BICUBIC)
        canvas.paste(glyph, (rng.randint(0, size - glyph.width), rng.randint(0, size - glyph.height)), glyph)
        path = out / f"{c:05x}.png"
        canvas.save(path)
        report.written += 1
        lines.append({"image_path": str(path), "h_div_w": 1.0, "text": unicodedata.name(chr(c)).lower()})
    return lines


def _shapes_source(source: Source, out: Path, seed: int, report: Report) -> list[dict]:
    from ..images import to_pil
    from .shapes import ShapesDataset

    dataset = ShapesDataset(split="train", seed=seed, length=source.crops)
    lines = []
    for i in range(source.crops):
        H, W = [(192, 192), (192, 288), (288, 192)][i % 3]
        img_3HW, caption, _ = dataset.sample(i, H, W)
        path = out / f"{i:05d}.png"
        to_pil(img_3HW).save(path)
        report.files += 1
        report.written += 1
        lines.append({"image_path": str(path), "h_div_w": H / W, "text": caption})
    return lines


def build_corpus(out: str | Path, sources=DEFAULT_SOURCES, debs: str | Path | None = None, seed: int = 0) -> dict:
    """Build the corpus under `out` (idempotent per source: a source whose folder exists is rebuilt); -> manifest."""
    out = Path(out)
    debs = Path(debs) if debs else out / "debs"
    entries, lines = [], []
    for source in sources:
        folder = out / source.split / source.name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        rng, report = random.Random(f"{seed}:{source.name}"), Report()
        entry = {"name": source.name, "kind": source.kind, "split": source.split}
        if source.kind == "shapes":
            entry.update(origin="infinity.data.shapes (rendered here)", licence="this project's own")
            lines += _shapes_source(source, folder, seed, report)
        else:
            if source.package:
                root, version = fetch_package(source.package, debs)
                entry.update(origin=f"Debian package {source.package} {version}", licence=licences(root))
            else:
                root = Path(source.folder)
                if not root.is_dir():
                    raise ValueError(f"source {source.name}: {root} is not a folder")
                entry.update(origin=str(root), licence="the folder owner's")
            if source.kind == "emoji":
                photos = sorted(p for name in source.backdrops for p in (out / "train" / name).glob("*.jpg"))
                if source.backdrops and not photos:
                    raise ValueError(f"source {source.name}: build its backdrops {source.backdrops} first")
                lines += _emoji_source(source, root, folder, rng, report, photos)
            else:
                lines += _crop_source(source, root, folder, rng, report)
        entry.update(files_read=report.files, skipped=dict(report.skipped), images_written=report.written)
        logger.info("%s: %d files read, %d skipped %s, %d images written", source.name, report.files,
                    sum(report.skipped.values()), dict(report.skipped), report.written)
        entries.append(entry)
    total = sum(e["images_written"] for e in entries if e["split"] == "train")
    for e in entries:
        e["share_of_train"] = round(e["images_written"] / total, 4) if e["split"] == "train" and total else 0.0
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps({**line, "image_path": str(Path(line["image_path"]).relative_to(out))}) + "\n")
    manifest = {"seed": seed, "train_images": total, "sources": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infinity.data.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the corpus folder to write (e.g. data/corpus)")
    parser.add_argument("--debs", default=None, help="where downloaded packages are kept (default: OUT/debs)")
    parser.add_argument("--seed", type=int, default=0, help="fixes every crop and background (default: %(default)s)")
    parser.add_argument("--only", nargs="+", default=None, choices=[s.name for s in DEFAULT_SOURCES],
                        help="build these sources only (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sources = [s for s in DEFAULT_SOURCES if args.only is None or s.name in args.only]
    try:
        build_corpus(args.out, sources, args.debs, args.seed)
    except (RuntimeError, ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
