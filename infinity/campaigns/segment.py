"""One training segment: the trainer's command line in a child process, timed in wall and CPU seconds."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SegmentResult:
    returncode: int
    wall_s: float
    cpu_s: float  # user + system seconds of the child: what the segment cost, whatever else ran


def run_segment(args: list[str], log_path: str) -> SegmentResult:
    """`python -m infinity.train ARGS`, its output appended to `log_path`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    package_root = str(Path(__file__).resolve().parents[2])  # this checkout's infinity, wherever the caller runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "a") as log:
        returncode = subprocess.call([sys.executable, "-m", "infinity.train", *args], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return SegmentResult(returncode, round(time.perf_counter() - t0, 1), round(cpu, 1))


def command_line(args: list[str]) -> str:
    return " ".join(["python -m infinity.train", *args])
