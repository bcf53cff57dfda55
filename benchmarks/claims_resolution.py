"""At which resolution does the scene parser read a tokenizer's reconstructions? The embedded tokenizer (trained at
128 px) on the claims' held-out scenes rendered at several square sizes, each with its official 1:1 schedule, and
the tokens per image a transformer would predict there (what an arm's step costs grows with them).
    PYTHONPATH=. python benchmarks/claims_resolution.py --out benchmarks/results/claims_resolution.json
"""
import argparse
import json
import os

import torch

from infinity.eval.shapes import evaluate_tokenizer, evaluation_scenes
from infinity.eval.tokenizers import load_tokenizer
from infinity.precision import cpu_model
from infinity.schedules import square_schedule

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--tokenizer", default="assets/embedded/tokenizer.safetensors")
ap.add_argument("--pixels", type=int, nargs="+", default=[64, 80, 96, 128])
args = ap.parse_args()
torch.set_num_threads(1)
tokenizer = load_tokenizer(args.tokenizer).float()
scenes = evaluation_scenes({1: 31, 2: 50, 3: 50})
rows = []
for pixels in args.pixels:
    schedule = square_schedule(pixels, tokenizer.config.patch_size)
    scores = evaluate_tokenizer(tokenizer, schedule, scenes).to_dict()
    rows.append({"pixels": pixels, "scales": [list(g) for g in schedule.scales],
                 "tokens": sum(h * w for h, w in schedule.scales),
                 "parser_pass": {n: s["accuracy"] for n, s in scores.items()},
                 "psnr_db": {n: s["psnr_db"] for n, s in scores.items()}, "scores": scores})
    print(json.dumps(rows[-1]), flush=True)
json.dump({"what": __doc__.split("\n    PYTHONPATH")[0], "tokenizer": args.tokenizer,
           "heldout_scenes": [31, 50, 50], "cpu": cpu_model(), "load_average": [round(v, 2) for v in os.getloadavg()],
           "rows": rows}, open(args.out, "w"), indent=1)
