"""Command line: `python -m infinity generate --prompt "..." --out x.png`, `python -m infinity tokenize IMAGE ...`.

generate: a text-to-image run of a pipeline (the embedded model, a released one, or a model folder), optionally
writing the decoded F_k of every scale.
tokenize: encode an image into K scales of bits, decode the cumulative features F_k after every scale,
write each as a PNG and print the PSNR of each against the (resized) input. Our .safetensors tokenizers (the
embedded model's by default) use the app's schedules, so the app and this command resize an image to the same
size; official .pth tokenizers use the official templates of --budget.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image

from .checkpoints import CheckpointError, load_model, load_official_tokenizer
from .images import fit, open_image, psnr, to_pil, to_tensor
from .official import OFFICIAL_MODELS, OFFICIAL_REPO, WEIGHTS_DIR_ENV
from .options import check_inputs
from .pipeline import InfinityPipeline
from .schedules import (
    ASPECT_RATIOS, BUDGETS, Schedule, get_schedule, nearest_schedule, parse_aspect_ratio, shapes_schedules,
)
from .tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer

logger = logging.getLogger(__name__)


EMBEDDED_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "embedded" / "tokenizer.safetensors"
HUB_TIMEOUT_S = 5.0  # how long to wait for the Hugging Face Hub to answer before saying it cannot be reached


def _reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds (name lookup included, which
    a socket timeout does not bound: hence the thread)."""
    import socket

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result)


def _download(filename: str) -> Path:
    """An official weights file from the Hugging Face cache or Hub, or CheckpointError saying why not, in one line
    and within seconds when the Hub cannot be reached (no retries, no warnings)."""
    from huggingface_hub import constants, hf_hub_download

    def failed(reason: str) -> CheckpointError:
        return CheckpointError(f"could not download {filename} from the Hugging Face repo {OFFICIAL_REPO} ({reason}); "
                               "download it yourself and pass --weights PATH")

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Path(hf_hub_download(OFFICIAL_REPO, filename, local_files_only=True))  # already cached
        except Exception:
            pass
        if constants.HF_HUB_OFFLINE:
            raise failed("HF_HUB_OFFLINE is set and the file is not in the cache") from None
        if not _reachable(constants.ENDPOINT):
            raise failed(f"{urlparse(constants.ENDPOINT).hostname} cannot be reached: offline?") from None
        try:
            return Path(hf_hub_download(OFFICIAL_REPO, filename))
        except Exception as e:  # hub error, file renamed: all end the same way for the user
            raise failed(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}") from None


def load_tokenizer(preset: str | None, weights: str | None) -> BitwiseTokenizer:
    """Our .safetensors tokenizer, an official .pth with its --preset, the preset's file from the Hub, or (nothing
    given) the embedded model's tokenizer."""
    if weights is None and preset is None:
        weights = str(EMBEDDED_TOKENIZER)
    if weights and weights.endswith(".safetensors"):
        model = load_model(weights)
        if not isinstance(model, BitwiseTokenizer):
            raise CheckpointError(f"{weights}: holds a {type(model).__name__}, not a tokenizer")
        return model
    if preset is None:
        raise ValueError("--preset is required with official .pth weights (or pass our .safetensors file)")
    path = Path(weights) if weights else _download(TOKENIZER_PRESETS[preset].weight_file)
    return load_official_tokenizer(path, preset)


def _schedule(h_div_w: float, budget: str, patch_size: int) -> Schedule:
    """The official grids of the nearest template, at the tokenizer's own patch size."""
    official = get_schedule(h_div_w, budget)
    return Schedule(official.scales, patch_size, official.h_div_w, official.budget)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but this machine has no usable CUDA GPU; use --device cpu")
    return device


@torch.no_grad()
def tokenize(args: argparse.Namespace) -> int:
    device = _device(args.device)
    img = open_image(args.image)
    h_div_w = img.height / img.width if args.aspect_ratio == "auto" else parse_aspect_ratio(args.aspect_ratio)
    official = args.preset is not None and not (args.weights or "").endswith(".safetensors")
    tok = load_tokenizer(args.preset, args.weights).to(device)
    if official or args.budget:
        schedule = _schedule(h_div_w, args.budget or "0.06M", tok.config.patch_size)
    else:  # the app's schedules and resize rule: the same image gets the same size in both
        schedules = shapes_schedules(tok.config.patch_size)
        schedule = schedules[nearest_schedule(schedules, h_div_w)]
    x = to_tensor(fit(img, schedule.pixel_hw)).to(device)

    codes = tok.encode_scales(x, schedule.scales)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    to_pil(x[0]).save(out / "input.png")
    rows = []
    print(f"{schedule.num_scales} scales, {schedule.pixel_hw[1]}x{schedule.pixel_hw[0]} px, {tok.bits} bits per token")
    print(f"{'scale':>5} {'grid':>7} {'PSNR dB':>8}  file")
    for k, F_k in enumerate(codes.cumulative):
        recon = tok.decode(F_k)
        h, w = schedule.scales[k]
        name = f"scale_{k + 1:02d}_{h}x{w}.png"
        to_pil(recon[0]).save(out / name)
        value = psnr(recon, x)[0].item()
        rows.append({"scale": k + 1, "grid": [h, w], "psnr_db": round(value, 3), "file": name})
        print(f"{k + 1:>5} {f'{h}x{w}':>7} {value:>8.2f}  {name}")
    (out / "psnr.json").write_text(json.dumps(rows, indent=1))
    return 0


def generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {out}: unknown image format {out.suffix!r}; use .png or .jpg")
    check_inputs(args.prompt, args.negative_prompt, args.cfg, args.tau, args.top_k, args.top_p, args.seed)
    pipe = InfinityPipeline.from_pretrained(args.model, device=args.device)
    scales_dir = Path(args.save_scales) if args.save_scales else None
    if scales_dir:
        scales_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    events = pipe.stream(
        args.prompt, args.negative_prompt, args.aspect_ratio, args.cfg, args.tau, args.top_k, args.top_p, args.seed,
        preview=scales_dir is not None,
    )
    for event in events:
        if scales_dir:
            to_pil(event.preview_B3HW[0]).save(scales_dir / f"scale_{event.scale_index + 1:02d}.png")
    image = to_pil(event.image_B3HW[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    seconds = time.perf_counter() - start
    print(f"{out}: {image.width}x{image.height}, {event.num_scales} scales, seed {args.seed}, "
          f"{seconds:.1f} s on {pipe.device_name} ({pipe.name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infinity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser(
        "generate",
        help="generate an image from a prompt",
        description="Generate one image from --prompt with a pipeline and write it to --out. Sampling options left "
        "out take the model's defaults.",
    )
    g.add_argument("--prompt", required=True, help="what to draw")
    g.add_argument("--out", required=True, help="image file to write (.png, .jpg, ...)")
    g.add_argument(
        "--model",
        help=f"{' or '.join(OFFICIAL_MODELS)} (weights from ${WEIGHTS_DIR_ENV}, the Hugging Face cache or "
        f"{OFFICIAL_REPO}), or a model folder; default: the embedded model",
    )
    g.add_argument("--negative-prompt", default="", help="what to steer away from (default: the learned empty prompt)")
    g.add_argument("--aspect-ratio", default="1:1", help="width:height, one of the model's (e.g. 1:1, 3:2, 2:3)")
    g.add_argument("--cfg", type=float, help="classifier-free guidance weight (1 disables guidance)")
    g.add_argument("--tau", type=float, help="sampling temperature (> 0)")
    g.add_argument("--top-k", type=int, help="per-bit top-k (0 disables it)")
    g.add_argument("--top-p", type=float, help="per-bit top-p in [0, 1] (0 disables it)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed, an integer in [0, 2**53 - 1]; the same seed gives the same image")
    g.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when available)")
    g.add_argument("--save-scales", metavar="DIR", help="also write the decoded F_k of every scale as scale_KK.png")
    g.set_defaults(func=generate)
    t = sub.add_parser(
        "tokenize",
        help="encode an image into bit scales and write the reconstruction after every scale",
        description="Encode IMAGE with a bitwise multi-scale tokenizer; write the decoded cumulative features "
        "F_k after each scale k as PNGs in --out and print the PSNR of each against the input.",
    )
    t.add_argument("image", help="an image file (any format Pillow reads)")
    t.add_argument("--preset", choices=sorted(TOKENIZER_PRESETS), help="official tokenizer architecture")
    t.add_argument(
        "--weights",
        help="official .pth file for --preset, or one of our .safetensors tokenizer files; default: with --preset "
        f"download its file from {OFFICIAL_REPO}, without it the embedded model's tokenizer",
    )
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument(
        "--aspect-ratio",
        default="auto",
        help=f"'auto' (the image's own, nearest template) or width:height, e.g. {', '.join(list(ASPECT_RATIOS)[:6])}",
    )
    t.add_argument("--budget", default=None, choices=list(BUDGETS),
                   help="official pixel budget (scales used); default: 0.06M for official .pth tokenizers, the app's "
                        "schedules (128 px on the short side at 8 px per cell) for ours")
    t.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    t.set_defaults(func=tokenize)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("INFINITY_LOG_LEVEL", "WARNING"))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        # Bad input, missing files, a model that will not load (CheckpointError is a RuntimeError): one line;
        # the traceback at INFINITY_LOG_LEVEL=DEBUG.
        logger.debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
