"""The ledger of a campaign: one JSON line per training segment in `benchmarks/results/ledger_<campaign>.jsonl`."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from ..precision import cpu_model

RESULTS = Path("benchmarks/results")


def ledger_path(campaign: str, root: str | Path = ".") -> Path:
    return Path(root) / RESULTS / f"ledger_{campaign}.jsonl"


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a ledger, oldest first (none when there is no file yet); a damaged line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
    return rows


def append_row(path: str | Path, row: dict) -> dict:
    """Append `row` with the date, the CPU model and the load average; returns what was written."""
    row = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu": cpu_model(), "load_average": [round(v, 2) for v in os.getloadavg()], **row}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row

