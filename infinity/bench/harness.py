"""Timing one pipeline: end to end and stage by stage, peak memory, achieved FLOP rate.

A run is `pipe.stream(...)` consumed to the last event plus the conversion of the image to PIL, exactly what
the app does. The sampler and the pipeline enter a timer around each of their stages (`sampling.STAGES`, plus
the pipeline's text encoding); `StageClock` is that timer: `time.perf_counter` on the CPU, CUDA events on a GPU
(read once the run is over, so timing never synchronises the stream in between). Stages do not overlap, so in
every run they sum to at most its total; the rest is Python and event bookkeeping.
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..images import to_pil
from ..pipeline import InfinityPipeline

# The pipeline's stage names -> the names reported; `transformer` is reported per scale.
STAGE_NAMES = {
    "text_encoding": "text_encoding",
    "conditioning": "text_conditioning",
    "transformer": "transformer_step_{k:02d}",
    "sampling": "bit_sampling",
    "update": "feature_update",
    "preview": "preview_decode",
    "decode": "vae_decode",
    "to_pil": "image_to_pil",
}


class StageClock:
    """A `timer` for `InfinityPipeline.stream`: sums the seconds of each stage of one run."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, stage: str, scale_index: int | None = None) -> Iterator[None]:
        name = STAGE_NAMES[stage].format(k=scale_index)
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            start_s = time.perf_counter()
            try:
                yield
            finally:
                self._seconds[name] += time.perf_counter() - start_s

    def seconds(self) -> dict[str, float]:
        """Seconds per stage (waits for the GPU to finish first)."""
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._seconds[name] += start.elapsed_time(end) / 1000
            self._events.clear()
        return dict(self._seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    total_s: float
    stages: dict[str, float]
    image: Image.Image | None = None  # with keep=True: the image and every scale's bits (1, h, w, d) uint8
    bits: list[torch.Tensor] | None = None


def time_one(
    pipe: InfinityPipeline, prompt: str, aspect_ratio: str, seed: int, cfg: float, preview: bool, keep: bool = False
) -> Run:
    """One image, prompt to PIL, timed end to end and per stage; keep: also return the image and the bits."""
    clock = StageClock(pipe.device)
    bits = [] if keep else None
    _sync(pipe.device)
    start = time.perf_counter()
    for event in pipe.stream(prompt, aspect_ratio=aspect_ratio, cfg=cfg, seed=seed, preview=preview, timer=clock):
        if keep:
            bits.append(event.bits_Bhwd)
    with clock("to_pil"):
        image = to_pil(event.image_B3HW[0])
    _sync(pipe.device)
    total = time.perf_counter() - start
    return Run(total, clock.seconds(), image if keep else None, [b.cpu() for b in bits] if keep else None)


# ---- memory ----


class PeakMemory:
    """Peak memory of the code run inside `with` (bytes): allocated GPU memory on CUDA; on the CPU the process's
    peak resident set (VmHWM, reset on entry through /proc/self/clear_refs where Linux allows, else the
    lifetime peak ru_maxrss, which then includes loading)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes, self.source = device, 0, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "torch.cuda.max_memory_allocated"
        elif _reset_peak_rss():
            self.source = "peak RSS (VmHWM) of the runs"
        else:
            self.source = "peak RSS of the process (ru_maxrss, loading included)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak_bytes = _peak_rss() if self.source.startswith("peak RSS (VmHWM)") else process_peak_rss()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS (Linux >= 4.0)
    except OSError:
        return False
    return _peak_rss() > 0


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_peak_rss() -> int:
    """Peak resident set of this process since it started (ru_maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---- the benchmark ----


@dataclass
class Timings:
    runs: list[Run] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(r.total_s for r in self.runs)

    def stage_medians(self) -> dict[str, float]:
        """Median seconds of each stage over the runs, in pipeline order (transformer steps by scale)."""
        order = list(STAGE_NAMES)
        names = sorted({name for r in self.runs for name in r.stages}, key=lambda n: (_stage_rank(n, order), n))
        return {name: statistics.median(r.stages.get(name, 0.0) for r in self.runs) for name in names}


def _stage_rank(name: str, order: list[str]) -> int:
    for i, stage in enumerate(order):
        if name == STAGE_NAMES[stage].format(k=0) or name.startswith(STAGE_NAMES[stage].split("{")[0]):
            return i
    return len(order)


def benchmark(
    pipe: InfinityPipeline,
    prompt: str,
    aspect_ratio: str,
    seed: int,
    cfg: float,
    preview: bool,
    runs: int,
    warmup: int,
) -> tuple[Timings, PeakMemory]:
    """`warmup` untimed images, then `runs` timed ones under a peak-memory probe. Every image has a prompt of its
    own (`prompt` plus a number), so the pipeline's prompt cache never skips the text encoder. The first timed
    run keeps its image and bits (`Run.image`, `Run.bits`)."""
    for i in range(warmup):
        time_one(pipe, f"{prompt} {i}", aspect_ratio, seed + i, cfg, preview)
    timings = Timings()
    with PeakMemory(pipe.device) as memory:
        for i in range(warmup, warmup + runs):
            timings.runs.append(time_one(pipe, f"{prompt} {i}", aspect_ratio, seed + i, cfg, preview, keep=i == warmup))
    return timings, memory


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """The best rate of an n x n matmul in `dtype`: what this device sustains on the workload a peak is quoted
    for (1024 on a CPU, 8192 on a GPU by default)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    a @ a  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
