"""python -m infinity.campaigns {tokenizers,embedded} --minutes M: train on, evaluate, ship what is better.

    python -m infinity.campaigns tokenizers --minutes 150    # general-d8/d16/d32 in turn, from runs/ or the shipped
    python -m infinity.campaigns embedded --minutes 150      # the embedded transformer
    python -m infinity.campaigns table tokenizers            # the README's table, from the ledger

`python -m infinity.report` writes the tables into README.md and docs/. Start it first whenever work starts; it
stops by itself before the deadline (or stop it: the checkpoints in runs/ keep all but the last few steps).
Ledgers: benchmarks/results/ledger_{tokenizers,embedded}.jsonl.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..checkpoints import CheckpointError
from .embedded import EmbeddedCampaign, EmbeddedPlan
from .tables import TABLES
from .tokenizers import TokenizerCampaign, TokenizerPlan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infinity.campaigns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    campaigns = (("tokenizers", "the general tokenizers d8 / d16 / d32"), ("embedded", "the embedded transformer"))
    for name, help_ in campaigns:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--minutes", type=float, required=True, help="start no segment that would end after this")
        p.add_argument("--threads", type=int, default=1, help="CPU threads of the trainer (default: %(default)s)")
    tok = sub.choices["tokenizers"]
    tok.add_argument("--data", default=TokenizerPlan.data, help="training images (default: %(default)s)")
    tok.add_argument("--heldout", default=TokenizerPlan.heldout, help="held-out photographs (default: %(default)s)")
    t = sub.add_parser("table", help="print a campaign's markdown table, built from its ledger")
    t.add_argument("campaign", choices=sorted(TABLES))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.command == "table":
            print(TABLES[args.campaign]())
            return 0
        if args.minutes <= 0 or args.threads < 1:
            raise ValueError("--minutes must be > 0 and --threads >= 1")
        if args.command == "tokenizers":
            campaign = TokenizerCampaign(TokenizerPlan(data=args.data, heldout=args.heldout), threads=args.threads)
        else:
            campaign = EmbeddedCampaign(EmbeddedPlan(), threads=args.threads)
        campaign.run(args.minutes)
    except (ValueError, FileNotFoundError, CheckpointError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
