"""The precision the transformer runs in: chosen by what the device multiplies fast, applied as the official code
applies it.

- `auto_dtype`: bf16 for the released models on CUDA (as the official inference) and on a CPU that multiplies bf16
  in hardware (`native_bf16`: the avx512_bf16 / amx_bf16 flags on x86, bf16 on Arm); fp32 everywhere else, where
  bf16 matmuls are emulated and several times slower than fp32 (measured on an AMD EPYC without them: 19 vs 77
  GFLOP/s). Our own small models were trained in fp32 and stay there.
- `cast_blocks_`: the official bf16 scheme: the blocks' weights in bf16, everything else (text projection and pool,
  embeddings, head, and so the residual stream between blocks) in fp32, run under autocast (`autocast_events`).
  Casting the whole model instead puts the residual sum itself in bf16 and moves the logits further from fp32.
- `quantize_int8_`: an opt-in for CPUs: the blocks' Linear layers as dynamically quantized int8 (PyTorch's own
  `quantize_dynamic`): int8 weights (a quarter of fp32's memory), activations quantized per call.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16, x86 AMX, Arm BF16
INT8 = "int8"  # the dtype name that asks for `quantize_int8_`


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on Arm); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo (what benchmark figures are quoted for), or "unknown"."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return "unknown"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware."""
    return bool(cpu_flags() & BF16_FLAGS)


def auto_dtype(device: torch.device, released: bool) -> torch.dtype:
    """The transformer's dtype when none is asked for (see the module docstring)."""
    if not released:
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16
    dtype = torch.bfloat16 if device.type == "cpu" and native_bf16() else torch.float32
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

    The cross-attention's text key/value projections (`mat_kv`, run once per prompt) are left in fp32: the
    cross-attention reads their weight directly.
    """
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in blocks.parameters()):
        raise ValueError("int8 quantization takes fp32 blocks on the CPU")
    names = {name for name, m in blocks.named_modules() if isinstance(m, nn.Linear) and "mat_kv" not in name}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; it still works
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(blocks, names, dtype=torch.qint8, inplace=True)
    return blocks


def precision_name(model: nn.Module) -> str:
    """"int8" for quantized blocks, else the name of their dtype ("float32", "bfloat16", ...)."""
    if any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.blocks.modules()):
        return INT8
    return str(compute_dtype(model)).removeprefix("torch.")
