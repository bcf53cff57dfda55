"""Which floating-point precision a machine runs fast, chosen by capability, never by assumption.

bf16 matmuls and convolutions are ~3x faster than fp32 on CPUs with native bf16 instructions (AVX512-BF16,
AMX; measured on an AMD EPYC with avx512_bf16: 348 against 117 GFLOP/s for a large matmul), and ~100x slower on
CPUs without them, where PyTorch emulates bf16. CUDA GPUs from Ampere on have native bf16.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
PRECISIONS = ("auto", "bf16", "fp32")


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
