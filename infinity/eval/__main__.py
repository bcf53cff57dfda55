"""python -m infinity.eval shapes: score a shapes model on held-out scenes with the scene parser.

    python -m infinity.eval shapes --weights assets/embedded            # prompt adherence of the pipeline
    python -m infinity.eval shapes --tokenizer runs/tok/tokenizer.safetensors   # PSNR + parser on reconstructions
    python -m infinity.eval shapes --weights assets/embedded --teacher-forced   # bit errors per scale
    python -m infinity.eval tokenizer --weights A.safetensors B.safetensors --images DIR   # vs JPEG, thumbnail
    python -m infinity.eval diversity --weights assets/embedded         # do seeds change the images?
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..checkpoints import CheckpointError, load_model
from ..tokenizer import BitwiseTokenizer
from ..schedules import shapes_schedules
from .diversity import evaluate_diversity, open_background_scenes
from .shapes import errors_table, evaluate_pipeline, evaluate_tokenizer, evaluation_scenes, teacher_forced_errors
from .tokenizers import evaluate as evaluate_tokenizers, results_table, write_results


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=None, help="guidance weight (default: the model's)")
    p.add_argument("--tau", type=float, default=None, help="temperature (default: the model's)")
    p.add_argument("--cfg-schedule", type=float, nargs="+", default=None, metavar="CFG",
                   help="one guidance weight per scale, coarse to fine (replaces --cfg)")
    p.add_argument("--tau-schedule", type=float, nargs="+", default=None, metavar="TAU",
                   help="one temperature per scale, coarse to fine (replaces --tau)")


def _sampling(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("cfg", args.cfg), ("tau", args.tau), ("cfg_schedule", args.cfg_schedule),
                              ("tau_schedule", args.tau_schedule)) if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infinity.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shapes", help="held-out shapes scenes")
    p.add_argument("--weights", default=None,
                   help="a pipeline folder (pipeline.json + weights); default: the embedded model")
    p.add_argument("--tokenizer", default=None, help="score this tokenizer (.safetensors) instead of a pipeline")
    p.add_argument("--count", type=int, nargs=3, default=(31, 50, 50), metavar=("ONE", "TWO", "THREE"),
                   help="held-out scenes with 1, 2 and 3 objects (default: 31 50 50; 31 is every held-out single object)")
    p.add_argument("--aspect-ratio", default="1:1", help="(default: %(default)s)")
    _sampling_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--given-scales", type=int, default=0,
                   help="take the first scales from the ground truth's tokens and sample the rest: where do the "
                        "errors arise (default: %(default)s, all sampled)")
    p.add_argument("--teacher-forced", action="store_true",
                   help="instead of generating: the transformer's bit errors per scale, on object and background "
                        "tokens, with every earlier scale from the ground truth (at --cfg, default 1: no guidance)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout",
                   help="score held-out scenes or scenes of the training stream (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the scores to this file")
    t = sub.add_parser("tokenizer", help="tokenizers side by side with JPEG and a thumbnail (photos, shapes)")
    t.add_argument("--weights", nargs="+", required=True, metavar="FILE", help="tokenizer .safetensors files")
    t.add_argument("--images", required=True, metavar="DIR", help="a folder of held-out photographs")
    t.add_argument("--size", type=int, default=128, help="square side the photos are cropped to (default: %(default)s)")
    t.add_argument("--shapes", type=int, default=31, metavar="N",
                   help="held-out shapes scenes of 1, 2 and 3 objects, N each (default: %(default)s, at most 31)")
    t.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="the first N photos in path order (default: all)")
    t.add_argument("--out", default=None, metavar="FILE", help="also write the results as JSON to this file")
    r = sub.add_parser("recovery", help="self-correction: true bits of scales 1..k, a fraction p of scale k flipped, "
                                        "the rest sampled; PSNR and parser against the clean reconstruction")
    r.add_argument("--weights", default=None, help="a pipeline folder; default: the embedded model")
    r.add_argument("--scales", type=int, nargs="+", default=(2, 3, 4), metavar="K", help="(default: 2 3 4)")
    r.add_argument("--fractions", type=float, nargs="+", default=(0.0, 0.1, 0.3), metavar="P",
                   help="(default: 0 0.1 0.3)")
    r.add_argument("--count", type=int, nargs=3, default=(8, 8, 8), metavar=("ONE", "TWO", "THREE"),
                   help="held-out scenes with 1, 2 and 3 objects (default: 8 8 8)")
    r.add_argument("--cfg", type=float, default=1.0, help="guidance weight (default: %(default)s: none)")
    r.add_argument("--tau", type=float, default=1.0, help="temperature (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    r.add_argument("--device", default="cpu", help="(default: %(default)s)")
    r.add_argument("--json", default=None, help="also write the points to this file")
    v = sub.add_parser("diversity", help="the spread of images over seeds, for captions that leave the background open")
    v.add_argument("--weights", default=None, help="a pipeline folder; default: the embedded model")
    v.add_argument("--prompts", type=int, default=8, help="held-out one-object captions (default: %(default)s)")
    v.add_argument("--seeds", type=int, default=6, help="seeds per caption (default: %(default)s)")
    v.add_argument("--aspect-ratio", default="1:1", help="(default: %(default)s)")
    _sampling_arguments(v)
    v.add_argument("--seed", type=int, default=0, help="the first seed (default: %(default)s)")
    v.add_argument("--device", default="cpu", help="(default: %(default)s)")
    v.add_argument("--json", default=None, help="also write the figures to this file")
    return parser


def recovery(args: argparse.Namespace) -> int:
    from ..pipeline import InfinityPipeline
    from .recovery import recovery_curve, recovery_table

    scenes = evaluation_scenes({n + 1: c for n, c in enumerate(args.count) if c > 0}, args.seed)
    pipe = InfinityPipeline.from_pretrained(args.weights, device=args.device)
    points = recovery_curve(pipe, scenes, args.scales, args.fractions, cfg=args.cfg, tau=args.tau, seed=args.seed)
    print(recovery_table(points, f"recovery of {args.weights or 'the embedded model'} on {len(scenes)} held-out "
                                 f"scenes (cfg {args.cfg:g}, tau {args.tau:g})"))
    if args.json:
        Path(args.json).write_text(json.dumps([pt.to_dict() for pt in points], indent=1) + "\n")
    return 0


def diversity(args: argparse.Namespace) -> int:
    from ..pipeline import InfinityPipeline

    pipe = InfinityPipeline.from_pretrained(args.weights, device=args.device)
    sampling = _sampling(args)
    result = evaluate_diversity(pipe, open_background_scenes(args.prompts), args.seeds, args.aspect_ratio, args.seed,
                                **sampling)
    title = (f"diversity of {args.weights or 'the embedded model'} over seeds ({args.aspect_ratio}, "
             f"{sampling or 'defaults'})")
    print(result.table(title))
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, **result.to_dict()}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.command == "tokenizer":
            results = evaluate_tokenizers(args.weights, args.images, args.size, args.shapes, args.max_images)
            print(results_table(results))
            if args.out:
                write_results(results, args.out)
            return 0
        if args.command == "recovery":
            return recovery(args)
        if args.command == "diversity":
            return diversity(args)
        scenes = evaluation_scenes({n + 1: c for n, c in enumerate(args.count) if c > 0}, args.seed, args.split)
        if args.teacher_forced and args.tokenizer:
            raise ValueError("--teacher-forced scores a pipeline's transformer: give --weights, not --tokenizer")
        if args.teacher_forced:
            from ..pipeline import InfinityPipeline

            pipe = InfinityPipeline.from_pretrained(args.weights, device=args.device)
            cfg = 1.0 if args.cfg is None else args.cfg
            rows = teacher_forced_errors(pipe, scenes, args.aspect_ratio, cfg)
            print(errors_table(rows, f"teacher-forced bit errors of {args.weights or 'the embedded model'} on "
                                     f"{len(scenes)} {args.split} scenes ({args.aspect_ratio}, cfg {cfg:g})"))
            if args.json:
                Path(args.json).write_text(json.dumps([vars(r) for r in rows], indent=1) + "\n")
            return 0
        if args.tokenizer:
            tokenizer = load_model(args.tokenizer, args.device)
            if not isinstance(tokenizer, BitwiseTokenizer):
                raise ValueError(f"{args.tokenizer} is not a tokenizer")
            schedules = shapes_schedules()
            if args.aspect_ratio not in schedules:
                raise ValueError(f"unknown aspect ratio {args.aspect_ratio!r}; choose one of {', '.join(schedules)}")
            scores = evaluate_tokenizer(tokenizer, schedules[args.aspect_ratio], scenes)
            title = f"tokenizer {args.tokenizer}: reconstructions of held-out scenes ({args.aspect_ratio})"
        else:
            from ..pipeline import InfinityPipeline

            pipe = InfinityPipeline.from_pretrained(args.weights, device=args.device)
            sampling = _sampling(args)
            scores = evaluate_pipeline(pipe, scenes, args.aspect_ratio, args.seed, args.given_scales, **sampling)
            title = f"prompt adherence of {args.weights or 'the embedded model'} on held-out prompts ({args.aspect_ratio}, {sampling or 'defaults'})"
            if args.given_scales:
                title += f", first {args.given_scales} scales from the ground truth"
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(scores.table(title))
    if args.json:
        Path(args.json).write_text(json.dumps({"title": title, "scores": scores.to_dict()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
