"""Recipes for the embedded transformer compared per CPU-second, from the same start.

    PYTHONPATH=. python benchmarks/embedded_recipe_ab.py --start runs/ab-start/transformer-600.safetensors \
        --start-step 600 --out benchmarks/results/embedded_recipe_ab.json

Each arm continues the embedded campaign's plan (its flags, cosine, data and seed) from the same weights, at the
same step (`--start-step`: the schedule goes on, the fresh optimizer warms up again), in segments until its trainer
process has spent the CPU budget; then its EMA weights, rounded to fp16 as they would ship, are scored like the
campaign's (adherence 1/2/3 objects at the pipeline's defaults, seed spread) and by teacher forcing on the held-out
scenes: per number of objects, the share of object-token bits predicted wrong at the scales that place and colour
the objects (3 to 5: grids 4x4 to 8x8) and at the last. Arms: "campaign" (the plan as it is) and "coarse" (three
steps in four train only the first five scales: 121 of 521 tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from infinity.campaigns.embedded import EmbeddedPlan, scores_row
from infinity.campaigns.segment import command_line, run_segment
from infinity.checkpoints import fp16_rounded, load_model
from infinity.eval.shapes import evaluation_scenes, teacher_forced_errors
from infinity.pipeline import InfinityPipeline
from infinity.precision import cpu_model

ARMS = {"campaign": (), "coarse": ("--coarse-share", "0.75", "--coarse-scales", "5")}
COARSE = (2, 3, 4)  # scales 3 to 5


def forced_errors(pipe, counts: dict[int, int]) -> dict:
    out = {}
    for n, count in counts.items():
        rows = teacher_forced_errors(pipe, evaluation_scenes({n: count}))
        tokens = sum(rows[k].object_tokens for k in COARSE)
        coarse = sum(rows[k].object_bit_error * rows[k].object_tokens for k in COARSE) / tokens
        out[str(n)] = {"scales_3_to_5": round(coarse, 4), "last_scale": round(rows[-1].object_bit_error, 4)}
    return out


def score(weights: Path, plan: EmbeddedPlan) -> dict:
    pipe = InfinityPipeline.from_pretrained(plan.folder, device="cpu", dtype=torch.float32, local_files_only=True)
    pipe.transformer.load_state_dict(fp16_rounded(load_model(weights)).state_dict())
    counts = {n + 1: c for n, c in enumerate(plan.counts)}
    return {**scores_row(pipe, plan), "teacher_forced_object_bit_error": forced_errors(pipe, counts)}


def run_arm(name: str, extra: tuple[str, ...], args, plan: EmbeddedPlan) -> dict:
    run = Path(args.runs) / name
    run.mkdir(parents=True, exist_ok=True)
    step, cpu, segments = args.start_step, 0.0, []
    while cpu < args.cpu_budget:
        step += args.segment
        cmd = ["transformer", *plan.flags, *extra, "--tokenizer", f"{plan.folder}/tokenizer.safetensors",
               "--init-from", args.start, "--out", str(run), "--steps", str(plan.steps), "--batch-size",
               str(plan.batch_size), "--start-step", str(args.start_step), "--stop-at", str(step), "--threads",
               str(args.threads), "--resume"]
        result = run_segment(cmd, str(run / "train.log"))
        if result.returncode:
            raise SystemExit(f"{command_line(cmd)} failed: see {run}/train.log")
        cpu += result.cpu_s
        segments.append({"step": step, "cpu_s": round(cpu, 1), "wall_s": result.wall_s})
    return {"arm": name, "flags": list(extra), "step": step, "images": (step - args.start_step) * plan.batch_size,
            "cpu_s": round(cpu, 1), "segments": segments, "command": command_line(cmd),
            **score(run / "transformer.safetensors", plan)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", required=True, help="transformer weights both arms start from")
    parser.add_argument("--start-step", type=int, required=True, help="the campaign step of those weights")
    parser.add_argument("--out", required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--cpu-budget", type=float, default=900.0, help="trainer CPU-seconds per arm")
    parser.add_argument("--segment", type=int, default=25, help="steps between CPU checks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/embedded-ab")
    args = parser.parse_args()
    plan = EmbeddedPlan()
    result = {"what": " ".join(__doc__.split("\n\n")[2].split()), "start": args.start, "start_step": args.start_step,
              "cpu": cpu_model(), "machine": platform.machine(), "load_average": [round(x, 2) for x in os.getloadavg()],
              "cpu_budget_s": args.cpu_budget,
              "start_scores": score(Path(args.start), plan), "arms": []}
    for name in args.arms:
        result["arms"].append(run_arm(name, ARMS[name], args, plan))
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
