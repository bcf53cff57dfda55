"""What a user may ask of the sampler, validated: the prompt, the seed, guidance and temperature.

- `check_inputs`: the checks that hold for every model (the CLI runs them before loading one).
- `SamplingDefaults`: what a model uses for every sampling option left at None (saved in pipeline.json, and
  set per released model in `official.py`).
- `sampler_options`: a call's options with the defaults filled in, as `sample_scales` takes them.

Every check raises a ValueError naming the option and the value it got.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

MAX_PROMPT_CHARS = 2000  # longer prompts are refused; within it the text encoder truncates to its max_length tokens
# One seed rule for the app, its API and the command line: an integer in [0, 2**53 - 1], the largest range a JSON
# number (a JavaScript double) carries exactly, so a seed shown in the browser reproduces its image anywhere.
MAX_SEED = 2**53 - 1


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_cfg(name: str, value) -> float:
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0 (1 disables guidance), got {value}")
    return float(value)


def _check_tau(name: str, value) -> float:
    if _number(name, value) <= 0:
        raise ValueError(f"{name} (temperature) must be > 0, got {value}")
    return float(value)


def _check_top_k(value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {value!r}")


def _check_top_p(value) -> None:
    if not 0.0 <= _number("top_p", value) <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {value}")


def _per_scale(name: str, values, K: int, check) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of {K} numbers (one per scale), got {values!r}")
    if len(values) != K:
        raise ValueError(f"{name} needs one value per scale: {K} for this aspect ratio, got {len(values)}")
    return [check(f"{name}[{k}]", v) for k, v in enumerate(values)]


def check_inputs(prompt, negative_prompt="", cfg=None, tau=None, top_k=None, top_p=None, seed=0) -> None:
    """ValueError naming the first input no model accepts (options at None are not checked). The aspect ratio
    and per-scale lists depend on the model: `InfinityPipeline.stream` checks those too."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    if not isinstance(negative_prompt, str) or len(negative_prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**53 - 1], got {seed!r}")
    if cfg is not None:
        _check_cfg("cfg", cfg)
    if tau is not None:
        _check_tau("tau", tau)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)


@dataclass(frozen=True)
class SamplingDefaults:
    """What `pipe(...)` uses for every sampling option left at None."""

    cfg: float = 3.0  # classifier-free guidance weight; 1 disables guidance
    tau: float = 1.0  # temperature dividing the bit logits
    top_k: int = 0  # per-bit top-k, 0 off (a bit has 2 values, so any k >= 2 keeps both)
    top_p: float = 0.0  # per-bit top-p, 0 off
    cfg_schedule: tuple[float, ...] | None = None  # one cfg per scale; replaces cfg when set
    tau_schedule: tuple[float, ...] | None = None  # one tau per scale; replaces tau when set

    def __post_init__(self) -> None:
        _check_cfg("cfg", self.cfg)
        _check_tau("tau", self.tau)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        for name, check in (("cfg_schedule", _check_cfg), ("tau_schedule", _check_tau)):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, tuple(_per_scale(name, values, len(values), check)))


def sampler_options(
    defaults: SamplingDefaults, K: int, cfg, tau, top_k, top_p, cfg_schedule, tau_schedule
) -> dict:
    """The sampler's cfg_schedule / tau / top_k / top_p for K scales: `defaults` where None, one cfg and tau per
    scale (a schedule replaces the scalar), per-scale values checked."""
    d = defaults
    if cfg_schedule is None and cfg is None:
        cfg, cfg_schedule = d.cfg, d.cfg_schedule
    if tau_schedule is None and tau is None:
        tau, tau_schedule = d.tau, d.tau_schedule
    cfg_K = [cfg] * K if cfg_schedule is None else cfg_schedule
    tau_K = [tau] * K if tau_schedule is None else tau_schedule
    return dict(
        cfg_schedule=_per_scale("cfg_schedule", cfg_K, K, _check_cfg),
        tau=_per_scale("tau_schedule", tau_K, K, _check_tau),
        top_k=d.top_k if top_k is None else int(top_k),
        top_p=d.top_p if top_p is None else float(top_p),
    )
