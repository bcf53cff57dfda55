"""How far the claims' tokenizer is from the parser target, and what its failures are.

    PYTHONPATH=. python benchmarks/claims_tokenizer_curve.py --out benchmarks/results/claims_tokenizer_curve.json \
        --tokenizer "embedded, trained at 128 px=assets/embedded/tokenizer.safetensors" \
        --tokenizer "64 px, step 1000 (shipped)=assets/self-correction/tokenizer.safetensors"

Each tokenizer reconstructs scenes at the claims' size (the schedule of `--recipe`: 64x64 and five scales for
shapes-claims, 96x96 and six for shapes-claims-96) and the scene parser reads the reconstructions: the held-out
scenes of the claims (31 / 50 / 50 with 1 / 2 / 3 objects) and, for a firmer one-object rate, 200 one-object scenes
of the training stream. For the one-object scenes that fail, the script counts which attribute the parser got wrong
in the object's cell (or that the cell is empty, or that only an extra object spoils it). The parser on the ground-
truth renders themselves is recorded too: it is the ceiling.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from infinity.data.scene_parser import fails_only_by_extras, parse_image, scene_matches
from infinity.data.shapes import render
from infinity.eval.shapes import evaluate_tokenizer, evaluation_scenes, to_tensor_np, to_uint8
from infinity.eval.tokenizers import load_tokenizer
from infinity.experiments.claims import ClaimsConfig
from infinity.precision import cpu_model
from infinity.train.recipes import RECIPES

HELDOUT = ClaimsConfig().eval_count
TRAIN_ONE_OBJECT = 200


def failure(parsed, scene) -> str | None:
    """None when the parser reads the one-object scene right; else what went wrong in the object's cell."""
    if scene_matches(parsed, scene):
        return None
    if fails_only_by_extras(parsed, scene):
        return "only extras"
    want = scene.objects[0]
    here = [o for o in parsed.objects if o.position == want.position]
    if not here:
        return "cell empty"
    wrong = [a for a in ("color", "shape", "size") if getattr(here[0], a) != getattr(want, a)]
    return "+".join(wrong) if wrong else "background"


@torch.no_grad()
def measure(label: str, path: str, schedule) -> dict:
    tokenizer = load_tokenizer(path).float()
    heldout = evaluate_tokenizer(tokenizer, schedule, evaluation_scenes({n + 1: c for n, c in enumerate(HELDOUT)}))
    H, W = schedule.pixel_hw
    kinds, passed = Counter(), 0
    scenes = evaluation_scenes({1: TRAIN_ONE_OBJECT}, split="train")
    for start in range(0, len(scenes), 20):
        chunk = scenes[start:start + 20]
        x = torch.cat([to_tensor_np(render(s, H, W)) for s in chunk])
        recon = to_uint8(tokenizer.decode(tokenizer.encode_scales(x, schedule.scales).quantized))
        for img, scene in zip(recon, chunk):
            kind = failure(parse_image(img), scene)
            passed += kind is None
            if kind:
                kinds[kind] += 1
    counts = sorted(heldout.total)
    return {"label": label, "tokenizer": path,
            "heldout_parser_pass": {str(n): round(heldout.accuracy(n), 4) for n in counts},
            "heldout_psnr_db": {str(n): round(heldout.psnr_sum[n] / heldout.total[n], 2) for n in counts},
            "train_one_object_pass": round(passed / len(scenes), 4),
            "train_one_object_failures": dict(kinds.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", action="append", required=True, metavar="LABEL=PATH",
                        help="a tokenizer file with the label its row gets (repeat, in the order of the curve)")
    parser.add_argument("--recipe", default=ClaimsConfig().recipe, choices=["shapes-claims", "shapes-claims-96"],
                        help="the claims recipe whose size and schedule the scenes take (default: %(default)s)")
    args = parser.parse_args()
    pairs = [t.split("=", 1) for t in args.tokenizer]
    if any(len(p) != 2 or not p[0] or not Path(p[1]).is_file() for p in pairs):
        parser.error("each --tokenizer is LABEL=PATH with an existing file")
    torch.set_num_threads(1)
    schedule = next(iter(RECIPES[args.recipe].schedules.values()))
    H, W = schedule.pixel_hw
    truth = evaluation_scenes({1: TRAIN_ONE_OBJECT}, split="train")
    ceiling = sum(scene_matches(parse_image(render(s, H, W)), s) for s in truth) / len(truth)
    result = {"what": " ".join(__doc__.split("\n\n")[2].split()), "cpu": cpu_model(), "recipe": args.recipe,
              "pixels": [H, W], "heldout_scenes": list(HELDOUT), "train_one_object_scenes": TRAIN_ONE_OBJECT,
              "parser_on_ground_truth": round(ceiling, 4), "target_one_object": 0.9,
              "tokenizers": [measure(label, path, schedule) for label, path in pairs]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
