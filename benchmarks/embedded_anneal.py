"""Candidate embedded transformers scored as the embedded campaign scores them (fp16-rounded weights, the pipeline's
defaults, held-out scenes): one JSON line per file, gathered into --out.
    PYTHONPATH=. python benchmarks/embedded_anneal.py --out benchmarks/results/embedded_anneal.json \
        --candidate LABEL=FILE ...
"""
import argparse
import json
import os
import time

import torch

from infinity import InfinityPipeline
from infinity.campaigns.embedded import EmbeddedPlan, scores_row
from infinity.checkpoints import fp16_rounded, load_model
from infinity.precision import cpu_model

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--candidate", action="append", required=True, metavar="LABEL=FILE")
ap.add_argument("--what", default="")
args = ap.parse_args()
torch.set_num_threads(1)
pipe = InfinityPipeline.from_pretrained("assets/embedded", device="cpu", dtype=torch.float32, local_files_only=True)
runs = []
for item in args.candidate:
    label, path = item.split("=", 1)
    pipe.transformer.load_state_dict(fp16_rounded(load_model(path)).state_dict())
    t = time.time()
    row = {"label": label, "transformer": path, **scores_row(pipe, EmbeddedPlan()), "seconds": round(time.time() - t)}
    print(json.dumps(row), flush=True)
    runs.append(row)
json.dump({"what": args.what, "cpu": cpu_model(), "load_average": [round(v, 2) for v in os.getloadavg()], "runs": runs},
          open(args.out, "w"), indent=1)
