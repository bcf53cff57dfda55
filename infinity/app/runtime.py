"""Serving concerns of the app: loading the model once, warming it up, the banner, the Spaces GPU decorator."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..campaigns.tables import shipped_embedded_evaluation
from ..official import OFFICIAL_MODELS
from ..pipeline import InfinityPipeline
from .vocabulary import how_often

logger = logging.getLogger(__name__)

MODEL_ENV = "INFINITY_MODEL"  # the model to serve when --model is not given: a released name or a folder
CHECKOUT = Path(__file__).resolve().parents[2]  # where benchmarks/results/ is, when the package runs from a clone


def import_spaces() -> bool:
    """Import `spaces` (Hugging Face ZeroGPU) when it is installed; whether it is. It must come before anything
    initialises CUDA (loading the model onto the GPU does): it patches torch so that the GPU is attached per call,
    and refuses to start, or leaves the model on the CPU, when CUDA is up already."""
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def gpu(fn: Callable, duration: int = 60) -> Callable:
    """`fn` under `spaces.GPU` (a GPU is attached per call on a ZeroGPU Space) when the `spaces` package is
    importable, `fn` itself everywhere else."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


def on_zero_gpu() -> bool:
    """Running on a ZeroGPU Space, where the GPU exists only inside `spaces.GPU` calls."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def model_label(model: str | None) -> str:
    if model is None:
        return "the embedded model"
    return model if not Path(model).exists() else f"folder {Path(model).name}"


def load_pipeline(model: str | None, device: str | None) -> InfinityPipeline:
    """The pipeline of `model` (None: the embedded one), loaded once onto the device it stays on."""
    start = time.perf_counter()
    pipe = InfinityPipeline.from_pretrained(model, device=device)
    logger.info("loaded %s on %s in %.1f s", model_label(model), pipe.device_name, time.perf_counter() - start)
    return pipe


def warm_up(pipe: InfinityPipeline, scales: int = 2) -> float:
    """One tiny generation: the first `scales` scales of the first aspect ratio, previews decoded, so the first
    visitor does not pay for lazy initialisation (kernels, allocator, the text encoder). Returns seconds."""
    from .explorer import scale_preview

    start = time.perf_counter()
    prompt = pipe.examples[0] if pipe.examples else "warm-up"
    stream = pipe.stream(prompt, aspect_ratio=pipe.aspect_ratios[0], preview=False)
    for event in stream:
        scale_preview(pipe, event)
        if event.scale_index + 1 >= scales:
            break
    stream.close()
    seconds = time.perf_counter() - start
    logger.info("warmed up in %.1f s", seconds)
    return seconds


def banner(pipe: InfinityPipeline, model: str | None) -> str:
    """Which model runs on which device at which resolution, in one Markdown line; where it came from only when
    that adds to its name (a folder, or a name of the caller's)."""
    dtype = str(pipe.dtype).removeprefix("torch.")
    title = OFFICIAL_MODELS[pipe.name].title if pipe.name in OFFICIAL_MODELS else pipe.name
    H, W = max((s.pixel_hw for s in pipe.schedules.values()), key=lambda hw: hw[0] * hw[1])
    source = f" ({model_label(model)})" if model is not None and model_label(model) not in (pipe.name, title) else ""
    square = pipe.schedules.get("1:1")
    resolution = f"{square.pixel_hw[1]}x{square.pixel_hw[0]} px at 1:1, " if square is not None else ""
    return (
        f"Model **{title}**{source} on **{pipe.device_name}** ({dtype}) · "
        f"{resolution}{len(pipe.schedules)} aspect ratios, up to {W}x{H} px"
    )


def measured(model: str | None, root: str | os.PathLike = CHECKOUT) -> str:
    """For the embedded model (None), how often it draws what it is asked, from the evaluation of the shipped
    weights in its training ledger under `root`; "" for any other model or without that ledger."""
    if model is not None:
        return ""
    try:
        return how_often(shipped_embedded_evaluation(root))
    except ValueError:  # no ledger, or no evaluation in it
        return ""
