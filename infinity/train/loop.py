"""The training loop both trainers run: a `Task` says what a step computes, the loop does the rest.

Per step: reseed, set the learning rate, the task's batch and losses, backward, clip, AdamW, EMA, metrics;
every `checkpoint_every` steps an atomic checkpoint (model, optimizer, EMA, task state, step); every
`sample_every` steps the task's samples from the EMA model. `--resume` restarts from the checkpoint in the run
folder and reaches exactly the state an uninterrupted run reaches.

Runs that add up across interruptions: `stop_at` ends this process at that step (checkpoint and exported
weights written, the learning-rate horizon still `steps`), and `start_step` lets a run whose checkpoint was lost go
on from exported weights (`--init-from`) at the step they were exported: the schedules continue where they were, and
the fresh optimizer warms up again over `warmup_steps`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..precision import PRECISIONS, resolve_precision
from .engine import (
    CHECKPOINT_NAME,
    EMA,
    Distributed,
    MetricsLog,
    OptimConfig,
    adamw,
    clip_gradients,
    full_state,
    is_sharded,
    load_checkpoint,
    load_full_state,
    lr_at,
    save_checkpoint,
    set_lr,
    step_seed,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    out_dir: str
    steps: int
    batch_size: int  # global: summed over processes
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    checkpoint_every: int = 200
    sample_every: int = 0  # 0: only at the end
    resume: bool = False
    progress: bool = True
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the processes (FSDP2)
    precision: str = "fp32"  # "bf16": the step's forward under bf16 autocast (fp32 master weights); "auto": by device
    stop_at: int = 0  # 0: run to `steps`; else stop after this step (the lr still follows `steps`)
    start_step: int = 0  # without a checkpoint to resume: the step the initial weights were exported at

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch size must be >= 1, got {self.steps} and {self.batch_size}")
        if min(self.log_every, self.checkpoint_every) < 1 or self.sample_every < 0:
            raise ValueError("log and checkpoint intervals must be >= 1, the sample interval >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.stop_at <= self.steps or not 0 <= self.start_step < self.steps:
            raise ValueError(f"need 0 <= stop_at <= steps and 0 <= start_step < steps, got stop_at {self.stop_at}, "
                             f"start_step {self.start_step}, steps {self.steps}")

    @property
    def last_step(self) -> int:
        return self.stop_at or self.steps


class Task(Protocol):
    """What one trainer computes. `model` is trained, averaged (EMA) and checkpointed by the loop."""

    model: nn.Module
    optimizers: tuple[torch.optim.Optimizer, ...]  # the task's own (a GAN discriminator's), on the model's lr schedule

    def setup(self, dist: Distributed, wrapped: nn.Module) -> None: ...

    def losses(self, step: int, dist: Distributed) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss to minimise, metrics, items processed by this process)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def samples(self, ema_model: nn.Module, step: int, out_dir: Path) -> dict[str, float]: ...

    def export(self, ema_model: nn.Module, out_dir: Path) -> None: ...

    def identity(self) -> dict: ...


def _whole(model: nn.Module, model_cls: type[nn.Module]) -> nn.Module:
    """The model itself, or for an FSDP-sharded one an unsharded copy (built from the gathered weights)."""
    if not is_sharded(model):
        return model
    whole = model_cls(model.config).to(next(model.parameters()).device)
    whole.load_state_dict(full_state(model)[0])
    return whole


def train(task: Task, run: RunConfig, dist: Distributed) -> dict[str, float]:
    """Run (or resume) training; returns the last logged metrics."""
    out_dir = Path(run.out_dir)
    model = task.model.to(dist.device)
    model_cls = type(model)
    ema = EMA(model, run.optim.ema_decay) if run.optim.ema_decay > 0 else None
    wrapped = dist.wrap(model, fsdp=run.fsdp)  # FSDP2 shards `model` in place
    optimizer = adamw(model, run.optim)
    task.setup(dist, wrapped)

    bf16 = resolve_precision(run.precision, dist.device) == "bf16"
    start, rewarm_from = run.start_step, run.start_step  # a fresh optimizer mid-schedule warms up again
    ckpt_path = out_dir / CHECKPOINT_NAME
    if run.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, dist.device)
        if state["identity"] != task.identity():
            raise ValueError(
                f"{ckpt_path} was written by another configuration:\n  {state['identity']}\nnow:\n  {task.identity()}"
            )
        load_full_state(model, optimizer, state["model"], state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        task.load_state_dict(state["task"])
        start, rewarm_from = int(state["step"]), 0
        logger.info("resumed %s at step %d", ckpt_path, start)
    elif run.resume:
        logger.info("no checkpoint at %s: starting from step %d", ckpt_path, start)
    if start >= run.last_step:
        logger.info("%s is already at step %d: nothing to train, the weights are exported again", out_dir, start)

    log = MetricsLog(out_dir, run.steps, start, enabled=dist.is_main, progress=run.progress)
    metrics: dict[str, float] = {}
    window_items, window_t0 = 0, time.perf_counter()
    for step in range(start, run.last_step):
        torch.manual_seed(step_seed(run.seed, step, f"rank{dist.rank}"))
        lr = lr_at(step, run.steps, run.optim)
        if rewarm_from and step - rewarm_from < run.optim.warmup_steps:
            lr *= (step - rewarm_from + 1) / run.optim.warmup_steps
        for opt in (optimizer, *task.optimizers):
            set_lr(opt, lr)
        wrapped.train()
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, step_metrics, items = task.losses(step, dist)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(model, run.optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model, step)
        window_items += items * dist.world_size

        done = step + 1
        if done % run.log_every == 0 or done == run.last_step:
            elapsed = time.perf_counter() - window_t0
            metrics = dist.mean({"loss": float(loss.detach()), **step_metrics})
            metrics.update(lr=lr, grad_norm=grad_norm, items_per_s=window_items / max(elapsed, 1e-9))
            log.log(done, metrics)
            window_items, window_t0 = 0, time.perf_counter()
        log.advance()
        if done % run.checkpoint_every == 0 or done == run.last_step:
            model_state, optim_state = full_state(model, optimizer)
            if dist.is_main:
                save_checkpoint(ckpt_path, {
                    "step": done,
                    "identity": task.identity(),
                    "model": model_state,
                    "optimizer": optim_state,
                    "ema": ema.model.state_dict() if ema is not None else {},
                    "task": task.state_dict(),
                })
            dist.barrier()
        if dist.is_main and run.sample_every and done % run.sample_every == 0 and done < run.last_step and not (
            ema is None and is_sharded(model)
        ):
            log.log(done, task.samples(ema.model if ema else model, done, out_dir))
    final = ema.model if ema is not None else _whole(model, model_cls)
    if dist.is_main:
        task.export(final, out_dir)
        log.log(run.last_step, task.samples(final, run.last_step, out_dir))
    log.close()
    dist.barrier()
    return metrics
