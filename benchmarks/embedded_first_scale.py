"""Why seeds barely change the embedded model's open-background images: the first scale's bits.

For each background, the tokenizer's code of a plain image at the first scale (1x1, d bits); for held-out prompts
that leave the background open, the model's p(bit = 1) there at the defaults, what independent bits drawn from it
give, the backgrounds the parser reads over seeds, and the backgrounds that come out when the first scale is given
each background's true code (the later scales sampled).
    PYTHONPATH=. python benchmarks/embedded_first_scale.py --out benchmarks/results/embedded_first_scale.json
"""
import argparse
import itertools
import json
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image

from infinity import InfinityPipeline
from infinity.checkpoints import load_model
from infinity.data.scene_parser import parse_image
from infinity.data.shapes import BACKGROUNDS, caption
from infinity.eval.diversity import open_background_scenes
from infinity.precision import cpu_model

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--transformer", help="other transformer weights than the shipped ones")
ap.add_argument("--prompts", type=int, default=6)
ap.add_argument("--seeds", type=int, default=12)
ap.add_argument("--draws", type=int, default=4096, help="independent draws of the first scale's bits per prompt")
args = ap.parse_args()
torch.set_num_threads(1)
pipe = InfinityPipeline.from_pretrained(device="cpu", dtype=torch.float32)
if args.transformer:
    pipe.transformer.load_state_dict(load_model(args.transformer).state_dict())

codes = {name: pipe.encode_image(Image.new("RGB", (128, 128), tuple(int(c) for c in rgb)))[0]
         for name, rgb in BACKGROUNDS.items()}  # (1, 1, 1, d) uint8
code_bits = {name: c.flatten().tolist() for name, c in codes.items()}
hamming = {f"{a}-{b}": int((codes[a] != codes[b]).sum()) for a, b in itertools.combinations(codes, 2)}
distinct = {}
for name, bits in code_bits.items():
    distinct.setdefault(tuple(bits), []).append(name)
groups = list(distinct.values())  # backgrounds that share one first-scale code
group_names = ["/".join(g) for g in groups]
codes_Gd = torch.stack([codes[g[0]].flatten() for g in groups])
GIVEN_SEEDS = 2  # seeds per prompt and background with the first scale given

prompts, gen = [], torch.Generator().manual_seed(0)
for scene in open_background_scenes(args.prompts):
    text = caption(scene)
    p_d = next(iter(pipe.stream(text, seed=0, preview=False))).probs_Bhwd.flatten()
    draws_Nd = (torch.rand(args.draws, p_d.numel(), generator=gen) < p_d).to(torch.uint8)
    dist_NG = (draws_Nd[:, None, :] != codes_Gd[None]).sum(-1)  # Hamming distance of each draw to each code
    best_N = dist_NG.min(-1).values
    ties_N = (dist_NG == best_N[:, None]).sum(-1) > 1
    nearest = Counter("tie" if tie else group_names[g] for tie, g in zip(ties_N.tolist(), dist_NG.argmin(-1).tolist()))
    exact = {"/".join(g): round(float(torch.where(codes[g[0]].flatten().bool(), p_d, 1 - p_d).log10().sum()), 2)
             for g in groups}
    free = Counter(parse_image(np.asarray(pipe(text, seed=s).image)).background for s in range(args.seeds))
    given = {name: Counter(parse_image(np.asarray(pipe(text, seed=s, prefix_bits=[codes[name]]).image)).background
                           for s in range(GIVEN_SEEDS)) for name in BACKGROUNDS}
    prompts.append({
        "prompt": text, "p_bit1": [round(float(v), 3) for v in p_d],
        "mean_p_distance_from_half": round(float((p_d - 0.5).abs().mean()), 3),
        "log10_p_exact_code": exact,
        "independent_draws_nearest_code": dict(nearest),
        "draws_hamming_to_nearest_code_mean": round(float(best_N.float().mean()), 2),
        "free_backgrounds": dict(free),
        "given_first_code_backgrounds": {k: dict(v) for k, v in given.items()},
    })
    print(json.dumps(prompts[-1]), flush=True)

pooled_free = Counter()
for p in prompts:
    pooled_free.update(p["free_backgrounds"])
followed = sum(p["given_first_code_backgrounds"][name].get(name, 0) for p in prompts for name in BACKGROUNDS)
out = {
    "what": "The first scale (1x1) of the embedded model's images: the tokenizer's code of a plain image of each "
            "background, the model's p(bit = 1) there at the pipeline's defaults for held-out prompts that leave the "
            "background open, where independent bits drawn from those p land (the nearest first-scale code, in Hamming "
            "distance), the backgrounds the scene parser reads over seeds, and the backgrounds that come out when the "
            "first scale is given each background's true code (later scales sampled)",
    "transformer": args.transformer or "assets/embedded/transformer.safetensors",
    "cpu": cpu_model(),
    "load_average": [round(v, 2) for v in os.getloadavg()],
    "bits": len(next(iter(code_bits.values()))),
    "first_scale_codes": code_bits, "code_groups": group_names, "hamming": hamming,
    "seeds": args.seeds, "draws": args.draws, "prompts": prompts,
    "free_backgrounds_pooled": dict(pooled_free),
    "given_code_followed": followed, "given_code_images": GIVEN_SEEDS * len(BACKGROUNDS) * len(prompts),
}
json.dump(out, open(args.out, "w"), indent=1)
