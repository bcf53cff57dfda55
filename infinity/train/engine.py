"""The training engine shared by both trainers: processes, optimisation, checkpoints, metrics.

One script runs as a single process (CPU or one GPU) or as many under `torchrun` (gloo on CPU, NCCL on GPUs):
`Distributed.from_env()` reads the torchrun variables, `wrap()` puts a model under DistributedDataParallel when
there is more than one process. Models never see any of this.

Determinism: every step reseeds the global RNG from (seed, step, rank) and the trainers draw their data from
(seed, step) alone, so a run resumed from a checkpoint continues exactly as the uninterrupted run would have, and
the global batch of a step is the same whatever the number of processes.

Checkpoints are plain dicts of tensors and numbers (loadable with `weights_only=True`), written to a temporary
file and renamed, so a process killed at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


# ---- processes ----


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank, world size and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device: str = "auto") -> Distributed:
        """Join the process group torchrun describes (WORLD_SIZE > 1), or run alone."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return Distributed(rank, world_size, dev)

    def wrap(self, model: nn.Module, fsdp: bool = False) -> nn.Module:
        """DistributedDataParallel, or with `fsdp` FSDP2 sharding (each block, then the rest) for models too
        large to replicate; alone, the model itself."""
        if self.world_size == 1:
            return model
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in getattr(model, "blocks", []):
                fully_shard(block)
            return fully_shard(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes."""
        if self.world_size == 1 or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def shutdown(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def shard(self, global_batch: int) -> slice:
        """The rows of a global batch this process trains on."""
        if global_batch % self.world_size:
            raise ValueError(f"the batch size {global_batch} must be divisible by the {self.world_size} processes")
        n = global_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)


def step_seed(seed: int, step: int, stream: str = "") -> int:
    """A 63-bit seed for (run seed, step, stream), stable across Python processes (no salted hash())."""
    digest = hashlib.sha256(f"{seed}/{step}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def step_generator(seed: int, step: int, stream: str = "") -> torch.Generator:
    """A CPU generator for one step's random choices; the same in every process."""
    return torch.Generator().manual_seed(step_seed(seed, step, stream))


# ---- optimisation ----


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 200
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.999  # 0 disables the EMA copy

    def __post_init__(self) -> None:
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.warmup_steps >= 0):
            raise ValueError(f"need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0: {self}")
        if not (0 <= self.ema_decay < 1 and self.grad_clip >= 0):
            raise ValueError(f"need 0 <= ema_decay < 1 and grad_clip >= 0: {self}")


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate of `step` (0-based): linear warmup from 0, then a cosine down to lr * min_lr_ratio."""
    base, warm = config.lr, config.warmup_steps
    if step < warm:
        return base * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total_steps - warm))
    floor = base * config.min_lr_ratio
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings of size 1 per channel)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP shard (a DTensor); a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip to `max_norm` (when > 0) and return the gradient norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(_full(nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)))


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), kept in fp32."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # A shorter horizon early on, so the average does not drag the random initialisation along.
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(_full(p.detach()).float(), 1 - decay)  # sharded (FSDP): gathered, a full copy per process
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(_full(b))


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Whole (unsharded, CPU) model and optimizer state; under FSDP a collective every process must call."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer if optimizer is not None else [], options=opts)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Load what `full_state` wrote, into a plain or an FSDP-sharded model."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


# ---- checkpoints ----


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` atomically: a temporary file in the same folder, flushed, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint, read without executing pickled code."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path} is not a readable training checkpoint: {e}") from e


def load_init_weights(path: str, model_cls: type[nn.Module], config, official_loader, grow=None) -> nn.Module:
    """`--init-from`: our .safetensors (the same architecture, or one `grow(model, config)` turns into it) or an
    official .pth (key-mapped)."""
    from ..checkpoints import load_model

    if not path.endswith(".safetensors"):
        return official_loader(path, config)
    model = load_model(path)
    if isinstance(model, model_cls) and model.config != config and grow is not None:
        try:
            return grow(model, config)
        except ValueError:
            pass  # not a model `grow` handles: the error below says what was expected
    if not isinstance(model, model_cls) or model.config != config:
        raise ValueError(f"{path} holds another model than the {model_cls.__name__} being trained ({config})")
    return model


def save_grid(columns: list[torch.Tensor], path: Path) -> None:
    """Images (B, 3, H, W) in [-1, 1], one column per tensor, the B images down: a PNG at `path`."""
    from ..images import to_pil

    grid = torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid).save(path)


# ---- metrics ----


class MetricsLog:
    """Metrics of the main process: a JSONL file, TensorBoard when installed, and a tqdm progress bar."""

    def __init__(self, out_dir: Path, total_steps: int, start_step: int, enabled: bool, progress: bool = True):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._bar = None
        self._tb = None
        self._t0 = time.perf_counter()
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, smoothing=0.05)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("TensorBoard is not installed; metrics go to %s only", self.path)
        else:
            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, value, step)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "acc", "psnr", "lr", "items_per_s")}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def config_dict(obj) -> dict:
    """A dataclass as JSON-safe data (tuples become lists)."""
    return json.loads(json.dumps(asdict(obj)))
