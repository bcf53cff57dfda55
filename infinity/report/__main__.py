"""python -m infinity.report [--check]: rewrite the generated figures of README.md and docs/ from the result files
(with --check: only say which pages differ, exit 1 if any)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .blocks import render
from .figures import GENERATORS

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("infinity.report")


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infinity.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is out of date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text, GENERATORS, ROOT)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
            logger.info("%s %s", "out of date:" if args.check else "rewrote", page)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
