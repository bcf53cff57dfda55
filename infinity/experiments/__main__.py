"""python -m infinity.experiments claims: the paper's three claims, measured in miniature.

    python -m infinity.experiments claims --threads 2                 # everything: 15 arms + the d=8 tokenizer
    python -m infinity.experiments claims --threads 2                 # again: skips finished arms, resumes the rest
    python -m infinity.experiments claims --only bits --bits-tokenizers assets/tokenizers/general-d8.safetensors \\
        assets/tokenizers/general-d16.safetensors assets/tokenizers/general-d32.safetensors

    python -m infinity.experiments pair --without runs/claims/strength-0-seed0 \\
        --with runs/claims/strength-0.3-seed0                          # the app's matched pair

Writes docs/claims/results.json, results.md and recovery.png (see infinity/experiments/claims.py for the arms
and what keeps them matched).
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..checkpoints import CheckpointError
from .claims import CLAIMS, ClaimsConfig, run_claims
from .pair import export_pair

DEFAULTS = ClaimsConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infinity.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("claims", help="train and measure the matched arms of the three claims (resumable)")
    c.add_argument("--only", nargs="+", choices=CLAIMS, default=list(CLAIMS), help="claims to run (default: all)")
    c.add_argument("--out", default=DEFAULTS.out, help="arm folders (default: %(default)s)")
    c.add_argument("--docs", default=DEFAULTS.docs, help="where the results go (default: %(default)s)")
    c.add_argument("--recipe", default=DEFAULTS.recipe, help="(default: %(default)s)")
    c.add_argument("--tokenizer", default=DEFAULTS.tokenizer,
                   help="the self-correction arms' tokenizer (default: %(default)s)")
    c.add_argument("--head-tokenizer", default=None,
                   help="the head arms' tokenizer, of --head-bits bits (default: one trained here first)")
    c.add_argument("--head-bits", type=int, default=DEFAULTS.head_bits, help="(default: %(default)s)")
    c.add_argument("--bits-tokenizers", nargs="*", default=[], metavar="FILE",
                   help="tokenizers whose PSNR per scale the bit-depth claim compares")
    c.add_argument("--bits-pixels", type=int, default=DEFAULTS.bits_pixels,
                   help="image side of the bit-depth claim's reconstructions (default: %(default)s)")
    c.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS.seeds), help="(default: 0 1 2)")
    c.add_argument("--steps", type=int, default=DEFAULTS.steps, help="per transformer arm (default: %(default)s)")
    c.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="(default: %(default)s)")
    c.add_argument("--tokenizer-steps", type=int, default=DEFAULTS.tokenizer_steps,
                   help="of the head tokenizer when trained here (default: %(default)s)")
    c.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULTS.self_correction_strengths),
                   help="self-correction flip strengths compared (default: 0 0.3 0.6)")
    c.add_argument("--eval-count", type=int, nargs=3, default=list(DEFAULTS.eval_count),
                   metavar=("ONE", "TWO", "THREE"), help="held-out scenes per object count (default: 31 50 50)")
    c.add_argument("--recovery-scales", type=int, nargs="+", default=list(DEFAULTS.recovery_scales),
                   help="scales k whose bits are flipped (default: 2 3)")
    c.add_argument("--recovery-fractions", type=float, nargs="+", default=list(DEFAULTS.recovery_fractions),
                   help="fractions p flipped, 0 included (default: 0 0.1 0.2 0.4)")
    c.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    e = sub.add_parser("pair", help="ship one matched self-correction pair for the app (fp16, pair.json)")
    e.add_argument("--without", required=True, help="the arm folder trained without self-correction")
    e.add_argument("--with", dest="with_", required=True, help="the arm folder trained with it")
    e.add_argument("--tokenizer", default=DEFAULTS.tokenizer, help="the arms' tokenizer (default: %(default)s)")
    e.add_argument("--out", default="assets/self-correction", help="(default: %(default)s)")
    e.add_argument("--eval-count", type=int, nargs=3, default=list(DEFAULTS.eval_count),
                   metavar=("ONE", "TWO", "THREE"), help="held-out scenes the app offers (default: 31 50 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "pair":
        try:
            path = export_pair(args.without, args.with_, args.tokenizer, args.out,
                               {n + 1: c for n, c in enumerate(args.eval_count) if c > 0})
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0
    cfg = ClaimsConfig(
        out=args.out, docs=args.docs, recipe=args.recipe, tokenizer=args.tokenizer, head_tokenizer=args.head_tokenizer,
        head_bits=args.head_bits, bits_tokenizers=tuple(args.bits_tokenizers), bits_pixels=args.bits_pixels,
        seeds=tuple(args.seeds),
        steps=args.steps, batch_size=args.batch_size, tokenizer_steps=args.tokenizer_steps,
        self_correction_strengths=tuple(args.strengths), threads=args.threads, eval_count=tuple(args.eval_count),
        recovery_scales=tuple(args.recovery_scales), recovery_fractions=tuple(args.recovery_fractions),
    )
    try:
        records = run_claims(cfg, args.only)
    except (ValueError, FileNotFoundError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(records)} records: {cfg.docs}/results.json, results.md, recovery.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
