"""Which floating-point precision a machine runs fast, chosen by capability, never by assumption; and how the
transformer is put into it for inference.

bf16 matmuls and convolutions are ~3x faster than fp32 on CPUs with native bf16 instructions (AVX512-BF16,
AMX; measured on an AMD EPYC with avx512_bf16: 348 against 117 GFLOP/s for a large matmul), and much slower on
CPUs without them, where PyTorch emulates bf16 (an AMD EPYC without them, torch 2.13, 2 threads, a 1042x2048 by
2048x8192 matmul: 19 GFLOP/s in bf16 against 77 in fp32, and 128 as a dynamically quantized int8 Linear). CUDA
GPUs from Ampere on have native bf16.

Inference (the pipeline):
- `auto_dtype`: bf16 for the released models on CUDA (as the official inference) and on a CPU with native bf16;
  fp32 everywhere else. Our own small models were trained in fp32 and stay there.
- `cast_blocks_`: the official bf16 scheme: the blocks' weights in bf16, everything else (text projection and pool,
  embeddings, head, the blocks' norms, and so the residual stream between blocks) in fp32, run under autocast
  (`autocast_events`). Casting the whole model instead puts the residual sum itself in bf16 and moves the logits
  further from fp32 (tests/test_speed_precision.py).
- `quantize_int8_`: an opt-in for CPUs: the blocks' Linear layers as dynamically quantized int8 (PyTorch's own
  `quantize_dynamic`): int8 weights (a quarter of fp32's memory), activations quantized per call.
"""
from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16, x86 AMX, Arm BF16
PRECISIONS = ("auto", "bf16", "fp32")
INT8 = "int8"  # the dtype name that asks for `quantize_int8_`


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (or of the given text); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """True where bf16 runs natively: a CPU with a bf16 flag, or a CUDA device that supports it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool((cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """'auto' -> 'bf16' where the device has native bf16, else 'fp32'; 'bf16' and 'fp32' are kept (forced)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    chosen = "bf16" if native_bf16(device, flags) else "fp32"
    logger.info("precision auto on %s: %s", device, chosen)
    return chosen


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or the given text), what benchmark figures are quoted for."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return "unknown"


def auto_dtype(device: torch.device, released: bool) -> torch.dtype:
    """The transformer's dtype when none is asked for (see the module docstring)."""
    if not released:
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16
    dtype = torch.bfloat16 if device.type == "cpu" and native_bf16(device) else torch.float32
    logger.info("CPU %s native bf16: running the transformer in %s", "with" if dtype != torch.float32 else "without",
                str(dtype).removeprefix("torch."))
    return dtype


def cast_blocks_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The official scheme in place: `model.blocks` in `dtype`, every other parameter and buffer in fp32, and the
    blocks' own norms too (CUDA's autocast runs layer norms in fp32 whatever their weights; the CPU's does not
    cast them, so their weights must be fp32 to take the fp32 residual stream). Works on the meta device too
    (loading then converts each file tensor once, straight to its dtype)."""
    model.float()
    for module in model.blocks.modules():
        if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            for p in module.parameters(recurse=False):
                p.data = p.data.to(dtype)
    return model


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the blocks compute in: their parameters' (fp32 for int8 blocks, whose activations are fp32)."""
    return model.blocks[0].ada_gss.dtype


def autocast_events(events: Iterator, device: torch.device, dtype: torch.dtype) -> Iterator:
    """`events` with each step run under autocast to `dtype` (nothing for fp32). Autocast is entered around each
    `next()`, never across a `yield`, so it does not leak into the caller's code between events."""
    if dtype == torch.float32:
        yield from events
        return
    try:
        while True:
            with torch.autocast(device.type, dtype=dtype):
                try:
                    event = next(events)
                except StopIteration:
                    return
            yield event
    finally:
        events.close()


def quantize_int8_(blocks: nn.Module) -> nn.Module:
    """The Linear layers of `blocks` (the model's blocks, or one block) as dynamically quantized int8, in place;
    fp32 on the CPU only. One block at a time keeps a single fp32 block in memory while building a large model.
    """
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in blocks.parameters()):
        raise ValueError("int8 quantization takes fp32 blocks on the CPU")
    names = {name for name, m in blocks.named_modules() if isinstance(m, nn.Linear)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(blocks, names, dtype=torch.qint8, inplace=True)
    # The swapped-out fp32 layers sit in reference cycles, which Python's collector frees only when enough new
    # objects are made: building a large model block by block would otherwise keep every fp32 block alive
    # (Infinity-2B: 11 GiB instead of 3).
    gc.collect()
    return blocks


def precision_name(model: nn.Module) -> str:
    """"int8" for quantized blocks, else the name of their dtype ("float32", "bfloat16", ...)."""
    if any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.blocks.modules()):
        return INT8
    return str(compute_dtype(model)).removeprefix("torch.")
