"""The generated blocks of a markdown page: find them, and rewrite them from their generators."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

BLOCK = re.compile(r"(<!-- figures: (?P<name>[\w-]+) -->)(?P<body>.*?)(<!-- /figures -->)", re.S)

Generator = Callable[[Path], str]  # the repository root -> the block's markdown


def block_names(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text)]


def render(text: str, generators: Mapping[str, Generator], root: Path) -> str:
    """`text` with every block's body replaced by its generator's output: on lines of its own when the block
    spans lines, inline otherwise. KeyError names a block with no generator."""

    def replace(m: re.Match) -> str:
        name = m["name"]
        if name not in generators:
            raise KeyError(f"no generator for the figures block {name!r}")
        body = generators[name](root)
        if m["body"].startswith("\n"):
            body = f"\n{body}\n"
        return f"{m[1]}{body}{m[4]}"

    return BLOCK.sub(replace, text)
