"""Which scales carry a scene's layout? The embedded tokenizer encodes held-out scenes at 128 px; F_k (the codes of
scales 1..k, nothing sampled) is decoded after every scale and read two ways: by the scene parser (the pass rate and
the share of objects found in the right cell, with the right colour and with the right shape, per number of
objects), and by each object's own pixels: an object counts as readable when the mean colour of the decode over
the pixels it covers is nearer its colour than any other object or background colour. The same readability for the
image itself area-averaged to scale k's grid and enlarged back (bilinear): what a grid that coarse can carry at best.
    PYTHONPATH=. python benchmarks/embedded_tokenizer_scales.py --out benchmarks/results/embedded_tokenizer_scales.json
"""
import argparse
import dataclasses
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from infinity.data.scene_parser import parse_image
from infinity.data.shapes import BACKGROUNDS, COLORS, DEFAULT_BACKGROUND, render
from infinity.eval.shapes import Scores, evaluation_scenes, to_tensor_np, to_uint8
from infinity.eval.tokenizers import load_tokenizer
from infinity.images import psnr
from infinity.precision import cpu_model
from infinity.schedules import square_schedule

PALETTE = {**COLORS, **BACKGROUNDS}


def readable(images: list[np.ndarray], scenes) -> dict[str, float]:
    """Per number of objects, the share of objects whose pixels' mean colour in `images` is nearest their colour."""
    hits: dict[str, list[bool]] = {}
    names, rgb_P3 = list(PALETTE), np.array(list(PALETTE.values()), dtype=np.float64)
    for img, scene in zip(images, scenes):
        for o in scene.objects:
            alone = render(dataclasses.replace(scene, objects=(o,)), *img.shape[:2])
            mask = (alone != np.array(BACKGROUNDS[scene.background or DEFAULT_BACKGROUND])).any(-1)
            mean = img[mask].astype(np.float64).mean(0)
            hits.setdefault(str(len(scene.objects)), []).append(
                names[int(np.linalg.norm(rgb_P3 - mean, axis=1).argmin())] == o.color)
    return {n: round(float(np.mean(v)), 3) for n, v in sorted(hits.items())}


ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--tokenizer", default="assets/embedded/tokenizer.safetensors")
args = ap.parse_args()
torch.set_num_threads(1)
tokenizer = load_tokenizer(args.tokenizer).float()
schedule = square_schedule(128, tokenizer.config.patch_size)
scenes = evaluation_scenes({1: 31, 2: 50, 3: 50})
x_B3HW = torch.cat([to_tensor_np(render(s, 128, 128)) for s in scenes])
rows = []
with torch.no_grad():
    for k, F_BdHW in enumerate(tokenizer.encode_scales(x_B3HW, schedule.scales).cumulative):
        scores = Scores()
        recon = tokenizer.decode(F_BdHW)
        for scene, r, p in zip(scenes, to_uint8(recon), psnr(recon, x_B3HW).tolist()):
            scores.add(len(scene.objects), parse_image(r), scene, p)
        tokens = sum(h * w for h, w in schedule.scales[:k + 1])
        coarse = F.interpolate(F.adaptive_avg_pool2d(x_B3HW, schedule.scales[k]), size=x_B3HW.shape[-2:],
                               mode="bilinear", align_corners=False)
        rows.append({"scale": k + 1, "grid": list(schedule.scales[k]), "tokens_so_far": tokens,
                     "scores": scores.to_dict(), "colour_readable": readable(to_uint8(recon), scenes),
                     "colour_readable_grid_average": readable(to_uint8(coarse), scenes)})
        print(json.dumps(rows[-1]), flush=True)
json.dump({"what": __doc__.split("\n    PYTHONPATH")[0], "tokenizer": args.tokenizer, "heldout_scenes": [31, 50, 50],
           "cpu": cpu_model(), "load_average": [round(v, 2) for v in os.getloadavg()], "rows": rows},
          open(args.out, "w"), indent=1)
