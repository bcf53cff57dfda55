"""The general tokenizers' campaign: d = 8, 16 and 32 trained the same way, from the same start, in segments.

Plan: from the shipped `assets/tokenizers/general-dD.safetensors` (all three grown from one shapes trunk, 2,400
crops each), one cosine of `steps` steps per depth, whole images at a 64 px short side for the first 80 % of it
(progressive resolution), then the model's own sizes. The depth with the fewest steps trains next, one segment at a
time, so the three are brought to the same point before any goes further; when all three stand at the same step
they are evaluated on the held-out photographs and each is shipped (in fp16) if it beats the shipped file there.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoints import fp16_rounded, load_model, save_model
from ..eval.tokenizers import final_psnr, load_photos, photo_psnr
from ..images import open_image
from .ledger import append_row, ledger_path, read_rows
from .segment import command_line, run_segment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerPlan:
    bits: tuple[int, ...] = (8, 16, 32)
    steps: int = 6000  # one cosine per depth, across interrupted runs
    batch_size: int = 16
    low_res: str = "64:4800"  # SIZE:UNTIL: whole images at a 64 px short side for the first 80 % of the steps
    segment: int = 100  # steps per segment
    data: str = "data/corpus/train"
    heldout: str = "data/corpus/heldout"
    eval_size: int = 128  # the model's own size (its 1:1 schedule)
    app_photo: str = "assets/examples/coffee.png"  # the app's example photograph (its package is held out)
    runs: str = "runs/campaign-tokenizers"
    shipped: str = "assets/tokenizers/general-d{bits}.safetensors"
    start_images: int = 2400  # crops the shipped start had seen (300 steps of 8)
    flags: tuple[str, ...] = field(default=(
        "--recipe", "shapes-small", "--lr", "6e-4", "--warmup-steps", "50", "--ema-decay", "0.995",
        "--color-weight", "1", "--entropy-weight", "0.01", "--feature-commitment-weight", "0.25",
        "--checkpoint-every", "25", "--log-every", "10", "--no-progress",
    ))

    def run_name(self, bits: int) -> str:
        return f"general-d{bits}"

    def shipped_file(self, bits: int) -> Path:
        return Path(self.shipped.format(bits=bits))

    def run_dir(self, bits: int) -> Path:
        return Path(self.runs) / self.run_name(bits)


def shipped_step(rows: list[dict], name: str) -> int:
    """The step of the shipped weights: the last evaluation row that shipped them (0: the campaign's start)."""
    shipped = [r for r in rows if r.get("run") == name and r.get("shipped")]
    return int(shipped[-1]["step"]) if shipped else 0


def run_position(plan: TokenizerPlan, bits: int, rows: list[dict]) -> tuple[int, bool]:
    """(step, from_checkpoint): the run folder's checkpoint step when it survived, else the shipped weights' step."""
    ckpt = plan.run_dir(bits) / "checkpoint.pt"
    if ckpt.is_file():
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"]), True
    return shipped_step(rows, plan.run_name(bits)), False


def segment_args(plan: TokenizerPlan, bits: int, step: int, from_checkpoint: bool, stop_at: int,
                 threads: int) -> list[str]:
    args = ["tokenizer", *plan.flags, "--data", plan.data, "--bits", str(bits), "--out", str(plan.run_dir(bits)),
            "--steps", str(plan.steps), "--batch-size", str(plan.batch_size), "--low-res", plan.low_res,
            "--init-from", str(plan.shipped_file(bits)), "--stop-at", str(stop_at), "--threads", str(threads),
            "--resume"]
    if not from_checkpoint and step:
        args += ["--start-step", str(step)]
    return args


class TokenizerCampaign:
    def __init__(self, plan: TokenizerPlan, ledger: Path | None = None, threads: int = 1):
        self.plan, self.threads = plan, threads
        self.ledger = ledger or ledger_path("tokenizers")
        self._photos = None

    def photos(self):
        if self._photos is None:
            self._photos = load_photos(self.plan.heldout, self.plan.eval_size).images
        return self._photos

    def rows(self) -> list[dict]:
        return read_rows(self.ledger)

    def positions(self) -> dict[int, tuple[int, bool]]:
        rows = self.rows()
        return {bits: run_position(self.plan, bits, rows) for bits in self.plan.bits}

    def evaluate_shipped(self) -> None:
        """A baseline row for every shipped file the ledger has not scored on this held-out set yet."""
        rows = self.rows()
        for bits in self.plan.bits:
            name = self.plan.run_name(bits)
            if any(r.get("run") == name and r.get("kind") == "evaluation" and r.get("heldout") == self.plan.heldout
                   for r in rows):
                continue
            step = shipped_step(rows, name)
            model = load_model(self.plan.shipped_file(bits)).float()
            mean, pooled = final_psnr(model, self.photos())
            append_row(self.ledger, {"run": name, "kind": "evaluation", "step": step, "weights": "shipped",
                                     "heldout": self.plan.heldout, "heldout_images": len(self.photos()),
                                     "psnr_db": mean, "psnr_pooled_db": pooled, **self.app_photo(model),
                                     "shipped": False, "images_seen": self._images(step)})

    def app_photo(self, model) -> dict:
        """The app's example photograph at the size the app gives it: what a visitor sees first."""
        image = open_image(self.plan.app_photo)
        return {"app_photo": self.plan.app_photo, "app_photo_psnr_db": photo_psnr(model, image)}

    def _images(self, step: int) -> int:
        return self.plan.start_images + step * self.plan.batch_size

    def _cpu_total(self, name: str) -> float:
        segments = [r for r in self.rows() if r.get("run") == name and r.get("kind") == "segment"]
        return round(sum(r.get("cpu_s") or 0.0 for r in segments), 1)

    def train_segment(self, bits: int) -> dict:
        """Train the run of `bits` to its next segment boundary; the ledger row."""
        plan = self.plan
        step, from_checkpoint = run_position(plan, bits, self.rows())
        stop_at = min(plan.steps, (step // plan.segment + 1) * plan.segment)
        args = segment_args(plan, bits, step, from_checkpoint, stop_at, self.threads)
        plan.run_dir(bits).mkdir(parents=True, exist_ok=True)
        logger.info("%s: steps %d -> %d", plan.run_name(bits), step, stop_at)
        result = run_segment(args, str(plan.run_dir(bits) / "train.log"))
        if result.returncode != 0:
            raise RuntimeError(f"{command_line(args)} failed ({result.returncode}): see {plan.run_dir(bits)}/train.log")
        name = plan.run_name(bits)
        return append_row(self.ledger, {
            "run": name, "kind": "segment", "step_from": step, "step": stop_at, "resumed_from":
            "checkpoint" if from_checkpoint else "shipped weights", "images_seen": self._images(stop_at),
            "wall_s": result.wall_s, "cpu_s": result.cpu_s,
            "cpu_s_total": round(self._cpu_total(name) + result.cpu_s, 1),
            "threads": self.threads, "command": command_line(args),
        })

    def evaluate_and_ship(self, bits: int, step: int) -> dict:
        """Score the run's exported (EMA) weights as they would ship (fp16); ship them if they beat the shipped file."""
        plan, name = self.plan, self.plan.run_name(bits)
        model = load_model(plan.run_dir(bits) / "tokenizer.safetensors")
        mean, pooled = final_psnr(fp16_rounded(model), self.photos())
        best = max((r["psnr_db"] for r in self.rows() if r.get("run") == name and r.get("kind") == "evaluation"
                    and r.get("heldout") == plan.heldout and (r.get("shipped") or r.get("weights") == "shipped")),
                   default=float("-inf"))
        ship = mean > best
        drift = {}
        if ship:  # what fp16 storage costs, for the weights that ship
            drift["psnr_fp32_db"] = final_psnr(model, self.photos())[0]
            save_model(copy.deepcopy(model).half(), plan.shipped_file(bits))
            logger.info("%s: shipped step %d (%.2f dB > %.2f dB)", name, step, mean, best)
        return append_row(self.ledger, {
            "run": name, "kind": "evaluation", "step": step, "weights": "fp16 of the run's EMA",
            "heldout": plan.heldout, "heldout_images": len(self.photos()), "psnr_db": mean,
            "psnr_pooled_db": pooled, **self.app_photo(fp16_rounded(model)), **drift, "shipped": ship,
            "images_seen": self._images(step),
            "cpu_s_total": self._cpu_total(name),
        })

    def run(self, minutes: float) -> None:
        """Segments until the deadline (none is started that the last one's duration says would overrun it)."""
        deadline = time.monotonic() + minutes * 60
        self.evaluate_shipped()
        self._evaluate_if_level()  # a campaign stopped between its last segment and its evaluation
        last_wall: dict[int, float] = {}
        while True:
            positions = self.positions()
            bits = min(self.plan.bits, key=lambda b: positions[b][0])
            if positions[bits][0] >= self.plan.steps:
                logger.info("the plan is complete")
                return
            if time.monotonic() + last_wall.get(bits, 0.0) > deadline:
                logger.info("deadline: stopping before %s", self.plan.run_name(bits))
                return
            t0 = time.monotonic()
            self.train_segment(bits)
            last_wall[bits] = time.monotonic() - t0
            self._evaluate_if_level()

    def _evaluate_if_level(self) -> None:
        """When every depth stands at the same step (from its checkpoint) and it is not scored yet: score them there."""
        rows = self.rows()
        positions = {b: run_position(self.plan, b, rows) for b in self.plan.bits}
        steps = {step for step, _ in positions.values()}
        if len(steps) != 1 or not all(from_checkpoint for _, from_checkpoint in positions.values()):
            return
        step = steps.pop()
        for b in self.plan.bits:
            if not any(r.get("run") == self.plan.run_name(b) and r.get("kind") == "evaluation" and r["step"] == step
                       for r in rows):
                self.evaluate_and_ship(b, step)
