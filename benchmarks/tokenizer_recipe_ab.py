"""Progressive resolution against the model's own sizes throughout, from the same start, per CPU-second.

    PYTHONPATH=. python benchmarks/tokenizer_recipe_ab.py --out benchmarks/results/tokenizer_recipe_ab.json

Arm "own sizes": general-d16 as shipped before the campaign (git 986bcc3), trained with the campaign's flags and
cosine but without `--low-res` (whole images at 128 px from the first step), in segments, each segment's EMA
weights scored like the campaign's (fp16, the held-out photographs at 128x128). Arm "progressive": the campaign's
own d16 rows in benchmarks/results/ledger_tokenizers.jsonl (the same start, the same flags plus `--low-res
64:4800`). CPU seconds are the trainer process's, as in the ledger.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from infinity.campaigns.ledger import read_rows
from infinity.campaigns.segment import command_line, run_segment
from infinity.campaigns.tokenizers import TokenizerPlan
from infinity.checkpoints import fp16_rounded, load_model
from infinity.eval.tokenizers import final_psnr, load_photos

START_COMMIT = "986bcc3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--stops", type=int, nargs="+", default=[25, 50], help="steps of the own-sizes arm to score")
    parser.add_argument("--run", default="runs/recipe-ab-own-sizes")
    args = parser.parse_args()
    plan = TokenizerPlan()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    start = run / "start-d16.safetensors"
    if not start.is_file():
        start.write_bytes(subprocess.run(["git", "show", f"{START_COMMIT}:assets/tokenizers/general-d16.safetensors"],
                                         check=True, capture_output=True).stdout)
    photos = load_photos(plan.heldout, plan.eval_size).images
    points = [{"arm": "own sizes", "step": 0, "cpu_s": 0.0,
               "psnr_db": final_psnr(load_model(start).float(), photos)[0]}]
    cpu = 0.0
    for stop in args.stops:
        cmd = ["tokenizer", *plan.flags, "--data", plan.data, "--bits", "16", "--out", str(run / "out"),
               "--steps", str(plan.steps), "--batch-size", str(plan.batch_size), "--init-from", str(start),
               "--stop-at", str(stop), "--threads", "1", "--resume"]
        result = run_segment(cmd, str(run / "train.log"))
        if result.returncode:
            raise SystemExit(f"{command_line(cmd)} failed: see {run}/train.log")
        cpu += result.cpu_s
        model = load_model(run / "out" / "tokenizer.safetensors")
        points.append({"arm": "own sizes", "step": stop, "images": stop * plan.batch_size, "cpu_s": round(cpu, 1),
                       "psnr_db": final_psnr(fp16_rounded(model), photos)[0], "command": command_line(cmd)})
    rows = read_rows("benchmarks/results/ledger_tokenizers.jsonl")
    segments = [r for r in rows if r.get("run") == "general-d16" and r["kind"] == "segment"]
    for r in (r for r in rows if r.get("run") == "general-d16" and r["kind"] == "evaluation"):
        cpu_s = sum(s["cpu_s"] for s in segments if s["step"] <= r["step"])
        points.append({"arm": "progressive", "step": r["step"], "images": r["step"] * plan.batch_size,
                       "cpu_s": round(cpu_s, 1), "psnr_db": r["psnr_db"]})
    Path(args.out).write_text(json.dumps({"what": __doc__.split("\n\n")[2].replace("\n", " "), "heldout": plan.heldout,
                                          "heldout_images": len(photos), "points": points}, indent=1) + "\n")


if __name__ == "__main__":
    main()
