"""How far two images of the same prompt and seed lie apart (bf16 or int8 against fp32): the PSNR between the
images and the share of sampled bits that differ at each scale.

    python -m infinity.bench --preset infinity-2b --device cpu --budget 0.06M --runs 1 --dtype fp32 --outputs fp32.npz
    python -m infinity.bench --preset infinity-2b --device cpu --budget 0.06M --runs 1 --dtype int8 --outputs int8.npz
    python -m infinity.bench.compare fp32.npz int8.npz --json drift.json

`--outputs` keeps the first timed image of the benchmark (the same prompt and seed for the same arguments).
Bits are sampled: once one bit of a scale differs, the later scales see another input and may differ widely, so
the per-scale shares show where the two runs part, and the PSNR what that does to the image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import psnr, to_tensor


def save_outputs(path: Path, image: Image.Image, bits: list[torch.Tensor]) -> None:
    """The image (uint8 H x W x 3) and every scale's bits (1, h, w, d) uint8 in one .npz file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"bits_{k:02d}": b.to(torch.uint8).numpy() for k, b in enumerate(bits)}
    np.savez_compressed(path, image=np.asarray(image.convert("RGB")), **arrays)


def load_outputs(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(path) as f:
        return f["image"], [f[name] for name in sorted(n for n in f.files if n.startswith("bits_"))]


def compare(reference: Path, other: Path) -> dict:
    image_a, bits_a = load_outputs(reference)
    image_b, bits_b = load_outputs(other)
    if image_a.shape != image_b.shape or [b.shape for b in bits_a] != [b.shape for b in bits_b]:
        raise ValueError(f"{reference} and {other} hold images of different schedules")
    shares = [float((a != b).mean()) for a, b in zip(bits_a, bits_b)]
    psnr_db = float(psnr(to_tensor(Image.fromarray(image_a)), to_tensor(Image.fromarray(image_b)))[0])
    first = next((k for k, share in enumerate(shares) if share > 0), None)
    return {
        "reference": str(reference), "other": str(other), "psnr_db": psnr_db,
        "bits_differ_per_scale": shares, "first_scale_that_differs": first,
        "pixels_mean_abs_diff": float(np.abs(image_a.astype(np.float64) - image_b).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infinity.bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="outputs of the reference run (.npz from --outputs)")
    parser.add_argument("other", type=Path, help="outputs of the run to compare")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison here")
    args = parser.parse_args(argv)
    try:
        result = compare(args.reference, args.other)
    except (OSError, ValueError, KeyError) as err:
        print(f"python -m infinity.bench.compare: {err}", file=sys.stderr)
        return 2
    shares = " ".join(f"{100 * s:.1f}" for s in result["bits_differ_per_scale"])
    print(f"PSNR {result['psnr_db']:.2f} dB; bits that differ per scale (%): {shares}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
