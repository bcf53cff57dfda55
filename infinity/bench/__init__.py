"""Benchmark harness: `python -m infinity.bench` times a pipeline end to end and stage by stage.

models.py builds the pipeline of a preset (random weights of the exact shapes when the real ones are absent),
harness.py times it (`StageClock`, peak memory), flops.py counts its FLOPs on the meta device.
"""
from .flops import ImageFlops, image_flops
from .harness import StageClock, Timings, benchmark, time_one
from .models import PRESETS, BenchModel, build

__all__ = [
    "PRESETS", "BenchModel", "ImageFlops", "StageClock", "Timings", "benchmark", "build", "image_flops", "time_one",
]
