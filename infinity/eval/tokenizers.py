"""python -m infinity.eval tokenizer: tokenizers side by side, with two classical references, in one run.

Every tokenizer file reconstructs the same held-out photographs (center-cropped and resized to size x size, as
`python -m infinity tokenize` does) through the 1:1 schedule of its own patch size; the PSNR after every scale and
at the end is averaged over the photos. Beside them, on the same photos:

* JPEG (Pillow, optimised Huffman tables) at the bits of a tokenizer's final scale, d x h_K x w_K, and at all
  the bits its decoder needs, sum_k d h_k w_k (every scale): for each image and budget the quality (1..95) whose
  whole file is the largest not exceeding it. Where even quality 1 is larger,
  the quality-1 file is used and the record counts the image as over budget.
* A 16 x 16 thumbnail (area average) enlarged bicubically: 16 * 16 * 24 bits.

PSNR is averaged over the photos and also pooled (the PSNR of their mean squared error), which the few photos a
codec reproduces almost exactly cannot carry; photos of a single colour are skipped (infinite PSNR for JPEG).

A tokenizer spends d bits on every token of every scale: sum_k d h_k w_k bits in all, which is what a decoder
needs; d h_K w_K is its final scale alone (the budget the JPEG reference gets). Both are reported, with bits per
pixel. All three kinds of codec also reconstruct rendered held-out shapes scenes of 1, 2 and 3 objects: PSNR and
the share the scene parser reads exactly right (infinity.eval.shapes).
"""
from __future__ import annotations

import functools
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoints import CheckpointError, load_model
from ..data.scene_parser import parse_image
from ..data.shapes import Scene, render
from ..images import fit, open_image, psnr, to_tensor
from ..schedules import Schedule, nearest_schedule, shapes_schedules, square_schedule
from ..tokenizer import BitwiseTokenizer
from .shapes import Scores, evaluate_tokenizer, evaluation_scenes

logger = logging.getLogger(__name__)

JPEG_QUALITIES = range(1, 96)  # Pillow advises against qualities above 95
THUMBNAIL_SIDE = 16
RGB_BITS = 24


@dataclass
class Record:
    """One codec's results; bits are per image (a JPEG's: the mean over the photos)."""

    name: str
    kind: str  # "tokenizer", "jpeg" or "thumbnail"
    bits_final_scale: float  # a tokenizer's d h_K w_K; a reference's whole file
    bpp_final_scale: float
    psnr_db: float  # mean over the photos, of the final reconstruction
    psnr_pooled_db: float  # the same reconstructions' PSNR of the mean squared error over all photos
    bits_per_token: int | None = None
    grids: list[list[int]] | None = None
    bits_all_scales: int | None = None  # sum_k d h_k w_k
    bpp_all_scales: float | None = None
    psnr_per_scale_db: list[float] | None = None
    budget_bits: int | None = None  # JPEG: the bit budget it had to meet
    over_budget: dict[str, int] = field(default_factory=dict)  # JPEG: images above the budget even at quality 1
    shapes: dict[str, dict] = field(default_factory=dict)  # objects -> images, psnr_db, parser_agreement
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# The references


@dataclass(frozen=True)
class JpegFile:
    image: Image.Image  # the decoded file
    bits: int  # 8 x the file's bytes, headers included
    quality: int
    within_budget: bool


def jpeg_encode(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


@functools.lru_cache(maxsize=4096)
def _jpeg_bits(rgb: bytes, size: tuple[int, int]) -> tuple[int, ...]:
    """The file bits of an RGB image at every quality in JPEG_QUALITIES (cached: every budget searches them)."""
    img = Image.frombytes("RGB", size, rgb)
    return tuple(8 * len(jpeg_encode(img, q)) for q in JPEG_QUALITIES)


def jpeg_at_budget(img: Image.Image, budget_bits: int) -> JpegFile:
    """The largest JPEG of `img` (over every quality 1..95) whose file has at most `budget_bits` bits; the
    quality-1 file, marked not within budget, when none fits. File size need not grow with quality, so every
    quality is tried."""
    img = img.convert("RGB")
    bits = dict(zip(JPEG_QUALITIES, _jpeg_bits(img.tobytes(), img.size)))
    fitting = [q for q, b in bits.items() if b <= budget_bits]
    quality = max(fitting, key=lambda q: (bits[q], q)) if fitting else JPEG_QUALITIES[0]
    with Image.open(io.BytesIO(jpeg_encode(img, quality))) as decoded:
        image = decoded.convert("RGB")
    return JpegFile(image, bits[quality], quality, bool(fitting))


def thumbnail(img: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """`img` shrunk to side x side by area averaging and enlarged back bicubically."""
    return img.resize((side, side), Image.Resampling.BOX).resize(img.size, Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Photos:
    images: list[Image.Image]  # fitted to size x size
    unreadable: list[str]  # paths under the folder that would not open
    one_colour: list[str]  # skipped: every codec with a DC term reproduces them, at infinite PSNR


def load_photos(folder: str | Path, size: int, max_images: int | None = None) -> Photos:
    """The folder's images (recursively, in path order), each fitted to size x size; files that would not open and
    images of a single colour are skipped and named."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    extensions = Image.registered_extensions()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    photos = Photos([], [], [])
    for path in files:
        if max_images is not None and len(photos.images) == max_images:
            break
        try:
            img = fit(open_image(path), (size, size))
        except (ValueError, Image.DecompressionBombError) as e:
            logger.warning("skipped %s", e)
            photos.unreadable.append(str(path.relative_to(folder)))
            continue
        pixels = np.asarray(img)
        if (pixels == pixels[0, 0]).all():
            photos.one_colour.append(str(path.relative_to(folder)))
        else:
            photos.images.append(img)
    if not photos.images:
        found = [f"{len(v)} {what}" for what, v in (("unreadable image files", photos.unreadable),
                                                     ("images of one colour", photos.one_colour)) if v]
        raise ValueError(f"{folder}: {' and '.join(found) or 'no image files'}, nothing to evaluate on")
    return photos


def load_tokenizer(path: str | Path) -> BitwiseTokenizer:
    model = load_model(path)
    if not isinstance(model, BitwiseTokenizer):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a tokenizer")
    return model


# ---------------------------------------------------------------------------------------------------------
# Scoring


def _batch(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.cat([to_tensor(img) for img in images])


def _mean(values: Sequence[float]) -> float:
    return round(float(np.mean(values)), 3)


def pooled_psnr(psnr_db: Sequence[float]) -> float:
    """PSNR of the mean squared error over all images (of one size): unlike the mean PSNR, not carried by the few
    images a codec reproduces almost exactly."""
    mse = np.mean([4 * 10 ** (-p / 10) for p in psnr_db])
    return round(float(10 * np.log10(4 / mse)), 3)


@torch.no_grad()
def tokenizer_psnr_per_scale(tokenizer: BitwiseTokenizer, schedule: Schedule, photos: Sequence[Image.Image],
                             batch_size: int = 16) -> list[list[float]]:
    """PSNR of every photo (inner) after every scale (outer), decoding the cumulative features F_k."""
    per_scale: list[list[float]] = [[] for _ in schedule.scales]
    for start in range(0, len(photos), batch_size):
        x = _batch(photos[start:start + batch_size])
        codes = tokenizer.encode_scales(x, schedule.scales)
        for k, F_k in enumerate(codes.cumulative):
            per_scale[k] += psnr(tokenizer.decode(F_k), x).tolist()
    return per_scale


@torch.no_grad()
def photo_reconstruction(tokenizer: BitwiseTokenizer, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, reconstruction), each (1, 3, H, W) in [-1, 1], of one image at the size the app and `python -m
    infinity tokenize` give it: the nearest in shape of the tokenizer's shapes schedules (1:1, 3:2, 2:3)."""
    schedules = shapes_schedules(tokenizer.config.patch_size)
    schedule = schedules[nearest_schedule(schedules, image.height / image.width)]
    x_13HW = to_tensor(fit(image.convert("RGB"), schedule.pixel_hw))
    return x_13HW, tokenizer.decode(tokenizer.encode_scales(x_13HW, schedule.scales).quantized)


def photo_psnr(tokenizer: BitwiseTokenizer, image: Image.Image) -> float:
    """Final PSNR (dB) of one image at the app's size (`photo_reconstruction`)."""
    x_13HW, y_13HW = photo_reconstruction(tokenizer, image)
    return round(float(psnr(y_13HW, x_13HW)[0]), 3)


@torch.no_grad()
def reconstruct(tokenizer: BitwiseTokenizer, x_B3HW: torch.Tensor) -> torch.Tensor:
    """Square images in [-1, 1] through every scale of their 1:1 schedule and decoded once, clamped to [-1, 1]."""
    scales = square_schedule(x_B3HW.shape[-1], tokenizer.config.patch_size).scales
    return tokenizer.decode(tokenizer.encode_scales(x_B3HW, scales).quantized).clamp(-1, 1)


def final_psnr(tokenizer: BitwiseTokenizer, photos: Sequence[Image.Image], batch_size: int = 16) -> tuple[float, float]:
    """(mean, pooled) PSNR in dB of the photos' final reconstructions: the one figure a training run is scored by,
    without the per-scale decodes of `tokenizer_psnr_per_scale`."""
    final: list[float] = []
    for start in range(0, len(photos), batch_size):
        x = _batch(photos[start:start + batch_size])
        final += psnr(reconstruct(tokenizer, x), x).tolist()
    return round(sum(final) / len(final), 3), pooled_psnr(final)


def _shapes_dict(scores: Scores) -> dict[str, dict]:
    return {n: {"images": row["images"], "psnr_db": row["psnr_db"], "parser_agreement": row["accuracy"]}
            for n, row in scores.to_dict().items()}


def _score_reference(codec: Callable[[Image.Image], Image.Image], photos: Sequence[Image.Image],
                     scenes: Sequence[Scene], size: int) -> tuple[list[float], Scores]:
    """PSNR of every photo through `codec`, and PSNR with parser agreement on the rendered scenes."""
    photo_psnr = [psnr(to_tensor(codec(p)), to_tensor(p)).item() for p in photos]
    scores = Scores()
    for scene in scenes:
        original = Image.fromarray(render(scene, size, size))
        decoded = codec(original)
        scores.add(len(scene.objects), parse_image(np.asarray(decoded)), scene,
                   psnr(to_tensor(decoded), to_tensor(original)).item())
    return photo_psnr, scores


def tokenizer_record(name: str, tokenizer: BitwiseTokenizer, photos: Sequence[Image.Image], scenes: Sequence[Scene],
                     size: int) -> Record:
    schedule = square_schedule(size, tokenizer.config.patch_size)
    d, (H, W) = tokenizer.bits, schedule.latent_hw
    per_image = tokenizer_psnr_per_scale(tokenizer, schedule, photos)
    per_scale = [_mean(v) for v in per_image]
    record = Record(
        name=name, kind="tokenizer", bits_final_scale=d * H * W, bpp_final_scale=round(d * H * W / size**2, 4),
        psnr_db=per_scale[-1], psnr_pooled_db=pooled_psnr(per_image[-1]), bits_per_token=d,
        grids=[list(g) for g in schedule.scales],
        bits_all_scales=d * schedule.seq_len, bpp_all_scales=round(d * schedule.seq_len / size**2, 4),
        psnr_per_scale_db=per_scale,
    )
    if scenes:
        record.shapes = _shapes_dict(evaluate_tokenizer(tokenizer, schedule, scenes))
    return record


def jpeg_record(budget_bits: int, photos: Sequence[Image.Image], scenes: Sequence[Scene], size: int) -> Record:
    made: list[JpegFile] = []

    def codec(img: Image.Image) -> Image.Image:
        made.append(jpeg_at_budget(img, budget_bits))
        return made[-1].image

    photo_psnr, shape_scores = _score_reference(codec, photos, scenes, size)
    on_photos = made[:len(photos)]
    bits = float(np.mean([f.bits for f in on_photos]))
    record = Record(name=f"JPEG <= {budget_bits} bits", kind="jpeg", bits_final_scale=round(bits, 1),
                    bpp_final_scale=round(bits / size**2, 4), psnr_db=_mean(photo_psnr),
                    psnr_pooled_db=pooled_psnr(photo_psnr), budget_bits=budget_bits,
                    shapes=_shapes_dict(shape_scores) if scenes else {})
    for target, files in (("photos", on_photos), ("shapes scenes", made[len(photos):])):
        over = [f for f in files if not f.within_budget]
        record.over_budget[target] = len(over)
        if over:
            record.notes.append(
                f"{len(over)} of {len(files)} {target} exceed {budget_bits} bits even at quality 1 (their quality-1 "
                f"files are scored, {np.mean([f.bits for f in over]):.0f} bits on average)")
    qualities = [f.quality for f in on_photos]
    record.notes.append(f"qualities {min(qualities)}..{max(qualities)} on the photos")
    return record


def thumbnail_record(photos: Sequence[Image.Image], scenes: Sequence[Scene], size: int) -> Record:
    bits = THUMBNAIL_SIDE * THUMBNAIL_SIDE * RGB_BITS
    photo_psnr, shape_scores = _score_reference(thumbnail, photos, scenes, size)
    return Record(name=f"thumbnail {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE} bicubic", kind="thumbnail",
                  bits_final_scale=bits, bpp_final_scale=round(bits / size**2, 4), psnr_db=_mean(photo_psnr),
                  psnr_pooled_db=pooled_psnr(photo_psnr),
                  shapes=_shapes_dict(shape_scores) if scenes else {})


def evaluate(weights: Sequence[str | Path], images: str | Path, size: int = 128, shapes: int = 31,
             max_images: int | None = None) -> dict:
    """Every tokenizer, JPEG at each distinct budget among them (final scale, all scales), and the thumbnail: a
    JSON-ready dict."""
    if size < THUMBNAIL_SIDE:
        raise ValueError(f"--size must be at least {THUMBNAIL_SIDE}, got {size}")
    if shapes < 0:
        raise ValueError(f"--shapes must be >= 0, got {shapes}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    scenes = evaluation_scenes({n: shapes for n in (1, 2, 3)}) if shapes else []
    tokenizers = {str(path): load_tokenizer(path) for path in weights}  # every file checked before the slow steps
    for tokenizer in tokenizers.values():
        if size % tokenizer.config.patch_size:
            raise ValueError(f"--size {size} is not a multiple of the tokenizer's patch size {tokenizer.config.patch_size}")
    loaded = load_photos(images, size, max_images)
    photos = loaded.images
    records = []
    for name, tokenizer in tokenizers.items():
        logger.info("tokenizer %s", name)
        records.append(tokenizer_record(name, tokenizer, photos, scenes, size))
    for budget in sorted({int(r.bits_final_scale) for r in records} | {int(r.bits_all_scales) for r in records}):
        logger.info("JPEG at %d bits", budget)
        records.append(jpeg_record(budget, photos, scenes, size))
    records.append(thumbnail_record(photos, scenes, size))
    return {"images": {"folder": str(images), "size": size, "used": len(photos), "unreadable": loaded.unreadable,
                       "one_colour": loaded.one_colour},
            "shapes_per_object_count": shapes, "records": [asdict(r) for r in records]}


def write_results(results: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    except OSError as e:
        raise ValueError(f"{path}: cannot write the results ({e.strerror or e})") from None


def results_table(results: dict) -> str:
    """A markdown table of `evaluate`'s results."""
    header = ["name", "d", "bits (final scale)", "bpp", "bits (all scales)", "bpp (all)", "PSNR per scale (dB)",
              "PSNR photos (dB)", "pooled (dB)", "shapes PSNR 1/2/3 (dB)", "parser agreement 1/2/3"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results["records"]:
        shapes = [r["shapes"].get(str(n)) for n in (1, 2, 3)]
        name = r["name"] + (" (over budget: see notes)" if any(r["over_budget"].values()) else "")
        cells = [
            name, r["bits_per_token"] or "", f"{r['bits_final_scale']:g}", f"{r['bpp_final_scale']:.3f}",
            r["bits_all_scales"] or "", "" if r["bpp_all_scales"] is None else f"{r['bpp_all_scales']:.3f}",
            " / ".join(f"{v:.1f}" for v in r["psnr_per_scale_db"] or []),
            f"{r['psnr_db']:.2f}", f"{r['psnr_pooled_db']:.2f}",
            " / ".join("-" if s is None else f"{s['psnr_db']:.1f}" for s in shapes),
            " / ".join("-" if s is None else f"{s['parser_agreement']:.2f}" for s in shapes),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    info = results["images"]
    skipped = [f"{len(info[key])} {what}" for key, what in (("unreadable", "unreadable"),
                                                             ("one_colour", "of one colour")) if info[key]]
    lines.append(f"\n{info['used']} photos from {info['folder']} at {info['size']} px"
                 + (f" (skipped: {', '.join(skipped)})" if skipped else "")
                 + f"; {results['shapes_per_object_count']} held-out shapes scenes per object count.")
    lines += [f"- {r['name']}: {note}" for r in results["records"] for note in r["notes"]]
    return "\n".join(lines)
