"""python -m infinity.bench: how fast one image is, end to end and stage by stage.

    python -m infinity.bench                                            # embedded model, CUDA if present
    python -m infinity.bench --preset embedded --device cpu --json out.json --previews
    python -m infinity.bench --preset infinity-2b --device cpu --budget 0.06M --runs 1

Prints a table (median seconds of each stage, their FLOPs and FLOP rates, peak memory) and with --json writes
the same as JSON: at least {"preset", "device", "median_s", "stages": {name: median_s}, "peak_memory_bytes"},
plus every run's total and stages under "runs". Models whose weights are not on this machine run with random
weights of the same shapes (the output says so); speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from ..official import OFFICIAL_MODELS
from ..precision import INT8, cpu_model
from ..schedules import BUDGETS
from .compare import save_outputs
from .flops import image_flops
from .harness import Timings, benchmark, matmul_gflops, process_peak_rss
from .models import PRESETS, PROMPT_TOKENS, build, parameter_bytes

DEFAULT_PROMPT = "a red cube to the left of a blue ball, on a wooden table"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile of every transformer block: "default" (Inductor kernels) or "reduce-overhead" (the same, replayed
# as CUDA graphs); the first images pay for compiling, so use --warmup.
COMPILE_MODES = ("off", "default", "reduce-overhead")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infinity.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="embedded")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES, INT8], default="auto",
                        help="of the transformer's blocks; auto: bf16 for the released models on CUDA (as official) "
                             "and on CPUs with native bf16, else fp32; int8: fp32 with int8 Linear layers (CPU)")
    parser.add_argument("--budget", choices=list(BUDGETS), default=None,
                        help="pixel budget of the released models' schedules (default: the model's own, "
                             "0.06M for infinity-125m, 1M for the others)")
    parser.add_argument("--aspect-ratio", default="1:1")
    parser.add_argument("--cfg", type=float, default=None, help="guidance weight (default: the model's)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS,
                        help="tokens per prompt of the random stand-in for Flan-T5-XL")
    parser.add_argument("--runs", type=int, default=10, help="timed images (the medians are over these)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed images first (default 2; 0 with --runs 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="off",
                        help="torch.compile every transformer block (reduce-overhead: with CUDA graphs)")
    parser.add_argument("--previews", action="store_true",
                        help="also time the stream with a preview at every scale and report what previews add")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--outputs", type=Path, default=None,
                        help="save the first timed image and its bits here (.npz, for python -m infinity.bench.compare)")
    args = parser.parse_args(argv)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: unknown device; use cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no usable CUDA GPU; use --device cpu")
    args.device = device
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.warmup is None:
        args.warmup = 2 if args.runs > 1 else 0
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.dtype == INT8 and device.type != "cpu":
        parser.error(f"--dtype int8 runs on the CPU only, not on {device}")
    if args.threads is not None and (args.threads < 1 or device.type != "cpu"):
        parser.error(f"--threads needs a positive count and --device cpu, got {args.threads} on {device}")
    if args.prompt_tokens < 1:
        parser.error(f"--prompt-tokens must be >= 1, got {args.prompt_tokens}")
    if args.budget is not None and args.preset not in OFFICIAL_MODELS:
        parser.error(f"--budget applies to the released models ({', '.join(OFFICIAL_MODELS)}), not {args.preset}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Build the preset's pipeline, time it, and return the results (the JSON written by --json)."""
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # as it was, for callers in the same process (tests)


def _run(args: argparse.Namespace) -> dict:
    load_at_start = _load_average()
    dtype = None if args.dtype == "auto" else DTYPES.get(args.dtype, args.dtype)
    model = build(args.preset, args.device, dtype, args.budget, args.prompt_tokens)
    pipe = model.pipe
    if args.compile != "off":
        for block in pipe.transformer.blocks:
            block.compile(mode=args.compile, dynamic=True)  # one graph for every scale's token count
    schedule = pipe.schedule(args.aspect_ratio)
    cfg = pipe.defaults.cfg if args.cfg is None else args.cfg

    def timed(preview: bool) -> tuple[Timings, int, str]:
        timings, memory = benchmark(
            pipe, args.prompt, args.aspect_ratio, args.seed, cfg, preview, args.runs, args.warmup
        )
        return timings, memory.peak_bytes, memory.source

    timings, peak_bytes, peak_source = timed(preview=False)
    if args.outputs is not None:
        save_outputs(args.outputs, timings.runs[0].image, timings.runs[0].bits)
    with_previews = timed(preview=True)[0] if args.previews else None
    flops = image_flops(pipe, schedule, args.prompt, guided=cfg != 1)
    stages = timings.stage_medians()
    transformer_s = sum(s for name, s in stages.items() if name.startswith("transformer_step"))

    def rate(flop: int, seconds: float) -> float | None:
        return flop / seconds / 1e9 if seconds > 0 else None

    result = {
        "preset": args.preset,
        "device": args.device.type,
        "device_name": pipe.device_name,
        "cpu_model": cpu_model(),
        "load_average": {"start": load_at_start, "end": _load_average()},
        "dtype": pipe.precision,
        "threads": torch.get_num_threads() if args.device.type == "cpu" else None,
        "torch": torch.__version__,
        "weights": model.weights,
        "notes": model.notes,
        "aspect_ratio": args.aspect_ratio,
        "schedule": [list(hw) for hw in schedule.scales],
        "image_hw": list(schedule.pixel_hw),
        "cfg": cfg,
        "prompt": args.prompt,
        "runs_count": args.runs,
        "warmup": args.warmup,
        "compile": args.compile,
        "median_s": timings.median_s,
        "stages": stages,
        "runs": [{"total_s": r.total_s, "stages": r.stages} for r in timings.runs],
        "peak_memory_bytes": peak_bytes,
        "peak_memory_source": peak_source,
        "process_peak_memory_bytes": process_peak_rss(),
        "weights_bytes": parameter_bytes(pipe.transformer, pipe.tokenizer, pipe.text_encoder.model),
        "flops": {
            "text_encoding": flops.text_encoding, "transformer": flops.transformer, "vae_decode": flops.vae_decode,
            "preview_decode": flops.preview_decode, "total": flops.total(previews=False),
        },
        "gflops_per_s": {
            "total": rate(flops.total(previews=False), timings.median_s),
            "text_encoding": rate(flops.text_encoding, stages.get("text_encoding", 0.0)),
            "transformer": rate(flops.transformer, transformer_s + stages.get("text_conditioning", 0.0)),
            "vae_decode": rate(flops.vae_decode, stages.get("vae_decode", 0.0)),
        },
        "matmul_peak_gflops": matmul_gflops(args.device, pipe.dtype),
    }
    if with_previews is not None:
        result["previews"] = {
            "median_s": with_previews.median_s,
            "stages": with_previews.stage_medians(),
            "overhead": with_previews.median_s / timings.median_s - 1,
            "flops": flops.total(previews=True),
        }
    return result


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages when the run ended: other work on a shared machine shows here."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def format_table(result: dict) -> str:
    """The results as the text table the command prints."""
    stages, total = result["stages"], result["median_s"]
    where = (result["cpu_model"] if result["device"] == "cpu" else result["device_name"]) + (f", threads: {result['threads']}" if result["threads"] else "")
    h, w = result["image_hw"]
    lines = [
        f"{result['preset']} ({result['weights']} weights), {where}, {result['dtype']}, {result['aspect_ratio']} "
        f"{h}x{w} ({len(result['schedule'])} scales), cfg {result['cfg']}: median of {result['runs_count']} runs "
        f"after {result['warmup']} warm-up" + (f", torch.compile {result['compile']}" if result["compile"] != "off" else ""),
        *(f"  note: {note}" for note in result["notes"]),
        f"{'stage':<28}{'median ms':>10}{'share':>8}",
    ]
    for name, seconds in stages.items():
        lines.append(f"{name:<28}{1e3 * seconds:>10.1f}{100 * seconds / total:>7.1f}%")
    lines.append(f"{'other (Python, events)':<28}{1e3 * (total - sum(stages.values())):>10.1f}")
    lines.append(f"{'total':<28}{1e3 * total:>10.1f}{100.0:>7.1f}%")
    if "previews" in result:
        p = result["previews"]
        preview_s = p["stages"].get("preview_decode", 0.0)
        lines.append(
            f"{'with a preview every scale':<28}{1e3 * p['median_s']:>10.1f}  (+{100 * p['overhead']:.1f}%; "
            f"preview decodes {1e3 * preview_s:.1f} ms)"
        )
    flops, rates = result["flops"], result["gflops_per_s"]
    lines.append("GFLOP per image (matmuls + convolutions) and achieved GFLOP/s:")
    for name in ("text_encoding", "transformer", "vae_decode", "total"):
        achieved = f"{rates[name]:.1f}" if rates.get(name) else "-"
        lines.append(f"  {name:<26}{flops[name] / 1e9:>10.2f}{achieved:>10} GFLOP/s")
    lines.append(f"  {'preview decodes':<26}{flops['preview_decode'] / 1e9:>10.2f}")
    lines.append(f"matmul peak of this device ({result['dtype']}): {result['matmul_peak_gflops']:.0f} GFLOP/s")
    lines.append(
        f"peak memory: {result['peak_memory_bytes'] / 2**30:.2f} GiB ({result['peak_memory_source']}); "
        f"process peak RSS {result['process_peak_memory_bytes'] / 2**30:.2f} GiB; "
        f"weights {result['weights_bytes'] / 2**30:.2f} GiB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        result = run(args)
    except ValueError as err:  # an option the model refuses (e.g. an aspect ratio it has no schedule for)
        print(f"python -m infinity.bench: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
