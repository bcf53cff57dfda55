"""The paper's three claims in miniature: matched arms trained with the project's own trainer, then measured.

1. self-correction: the same transformer trained with flip strength 0 (plain teacher forcing), the trainer's
   default and a stronger one, each with several seeds; measured by the recovery curve (`infinity.eval.recovery`),
   held-out likelihood and prompt adherence.
2. head: the bitwise head against the index-wise head (a softmax over 2^d) at a d where the latter fits, each with
   several seeds, on one tokenizer of that d; plus how the index head's size grows with d.
3. bits: tokenizers given on the command line, PSNR after every scale.

Beside them, a record of the self-correction arms' tokenizer at the claims' size: the parser's pass rate on its
clean reconstructions of the held-out scenes, per number of objects. Adherence can only be judged where the
parser reads what the tokenizer itself rebuilds.

Fairness: arms of one claim differ in the one thing compared. The model is built from the seed alone and its
head is drawn last, so a bits arm and an index arm of one seed start from the same trunk; data, flips and
condition dropout come from separate generators, so a seed's arms see the same images and the same dropped
prompts; both heads' losses are in nats per bit with the same clipping (see `infinity.train.transformer_trainer`).
Sampling is the same for every arm compared: tau 1, no top-k / top-p. Guidance acts on 2d per-bit logits for one
head and on 2^d joint logits for the other, so the head arms are sampled without it (cfg 1: each model's own
distribution); the self-correction arms (all bitwise) are scored for adherence at `sc_cfg`. The recovery curve
is sampled at cfg 1 for every arm.

Resumable: every arm trains in its own folder with `--resume`; a finished arm (its `done.json` names the steps it
was trained for) is skipped, an unfinished one continues from its last checkpoint, and an arm's scores
(`scores.json`) are computed once per evaluation setting. Re-running the command picks up where the last sitting
stopped.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoints import load_model
from ..eval.recovery import recovery_curve
from ..eval.shapes import evaluate_pipeline, evaluate_tokenizer, evaluation_scenes
from ..options import SamplingDefaults
from ..text import TextEncoder
from ..train.__main__ import main as train_cli
from ..train.recipes import RECIPES
from .measures import heldout_likelihood, index_head_sizes, tokenizer_on_scenes

logger = logging.getLogger(__name__)

CLAIMS = ("self-correction", "head", "bits")


@dataclass(frozen=True)
class ClaimsConfig:
    out: str = "runs/claims"  # arm folders (checkpoints, weights, scores)
    docs: str = "docs/claims"  # results.json, results.md, recovery.png
    recipe: str = "shapes-claims"
    tokenizer: str = "assets/self-correction/tokenizer.safetensors"  # the self-correction arms' (64 px)
    head_tokenizer: str | None = None  # the head arms' tokenizer (d = head_bits); None: trained here first
    head_bits: int = 8
    bits_tokenizers: tuple[str, ...] = ()  # the bit-depth claim's tokenizers (e.g. d = 8 / 16 / 32)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 600  # per transformer arm (~0.85 s a step on one core of this CPU: ~9 min)
    batch_size: int = 16
    lr: float = 1e-3
    tokenizer_steps: int = 400  # the head tokenizer, when trained here from `tokenizer`'s trunk
    self_correction_strengths: tuple[float, ...] = (0.0, 0.3, 0.6)  # 0: none; 0.3: the trainer's default
    head_strength: float = 0.3  # both head arms train with the default self-correction
    threads: int = 0  # torch threads (0: torch's default)
    eval_count: tuple[int, int, int] = (31, 50, 50)  # held-out scenes with 1, 2, 3 objects (the evaluator's)
    recovery_scales: tuple[int, ...] = (2, 3)
    recovery_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    sc_cfg: float = 3.0  # guidance of the self-correction arms' adherence
    head_size_ds: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 32)
    bits_pixels: int = 128  # image side of the bit-depth claim's reconstructions


@dataclass(frozen=True)
class Arm:
    claim: str
    name: str
    seed: int
    head: str = "bits"
    strength: float = 0.0

    @property
    def folder(self) -> str:
        return f"{self.name}-seed{self.seed}"


def arms(cfg: ClaimsConfig) -> list[Arm]:
    out = [Arm("self-correction", f"strength-{s:g}", seed, strength=s)
           for s in cfg.self_correction_strengths for seed in cfg.seeds]
    out += [Arm("head", f"{head}-d{cfg.head_bits}", seed, head=head, strength=cfg.head_strength)
            for head in ("bits", "index") for seed in cfg.seeds]
    return out


@dataclass
class Runner:
    cfg: ClaimsConfig
    text_encoder: TextEncoder | None = field(default=None, repr=False)  # loaded on first use

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def _common(self) -> list[str]:
        return ["--recipe", self.cfg.recipe, "--resume", "--no-progress", "--threads", str(self.cfg.threads),
                "--warmup-steps", "50", "--ema-decay", "0.995", "--checkpoint-every", "100", "--log-every", "20"]

    def head_tokenizer(self) -> str:
        """The head arms' tokenizer: the one given, or one of d = head_bits trained here (once; resumable), starting
        from the self-correction tokenizer's trunk, so only its d-dependent layers learn from scratch."""
        if self.cfg.head_tokenizer:
            return self.cfg.head_tokenizer
        folder = self.out / f"tokenizer-d{self.cfg.head_bits}"
        weights = folder / "tokenizer.safetensors"
        if not _done(folder, self.cfg.tokenizer_steps):
            logger.info("training the d=%d tokenizer of the head arms in %s", self.cfg.head_bits, folder)
            self._train(folder, self.cfg.tokenizer_steps, [
                "tokenizer", "--bits", str(self.cfg.head_bits), "--out", str(folder), "--steps",
                str(self.cfg.tokenizer_steps), "--batch-size", "12", "--lr", "6e-4", "--object-weight", "4",
                "--color-weight", "1", "--entropy-weight", "0.01", "--feature-commitment-weight", "0.25",
                "--init-trunk-from", self.cfg.tokenizer, *self._common()])
        return str(weights)

    def _train(self, folder: Path, steps: int, argv: list[str]) -> None:
        if train_cli(argv) != 0:
            raise RuntimeError(f"training {folder} failed (see the error above); fix it and run again to resume")
        (folder / "done.json").write_text(json.dumps({"steps": steps, "seconds": _train_seconds(folder)}) + "\n")

    def train_arm(self, arm: Arm, tokenizer: str) -> Path:
        folder = self.out / arm.folder
        if _done(folder, self.cfg.steps):
            return folder
        logger.info("training %s (%s)", arm.folder, arm.claim)
        sc = ["--self-correction-scales", str(self._num_scales() - 1), "--self-correction-strength", str(arm.strength)]
        self._train(folder, self.cfg.steps, [
            "transformer", "--tokenizer", tokenizer, "--out", str(folder), "--steps", str(self.cfg.steps),
            "--batch-size", str(self.cfg.batch_size), "--seed", str(arm.seed), "--lr", str(self.cfg.lr),
            "--head", arm.head, "--scale-weight-power", "0.5", *(sc if arm.strength > 0 else []), *self._common()])
        (folder / "scores.json").unlink(missing_ok=True)  # new weights: score again
        return folder

    def _num_scales(self) -> int:
        return next(iter(RECIPES[self.cfg.recipe].schedules.values())).num_scales

    def _pipe(self, tokenizer: str, transformer: Path, cfg: float):
        from ..pipeline import InfinityPipeline
        from ..train.transformer_trainer import shared_text_encoder

        recipe = RECIPES[self.cfg.recipe]
        if self.text_encoder is None:
            self.text_encoder = shared_text_encoder(recipe.text_encoder, torch.device("cpu"),
                                                    recipe.transformer.text_maxlen)
        return InfinityPipeline(load_model(tokenizer), load_model(transformer), self.text_encoder, recipe.schedules,
                                SamplingDefaults(cfg=cfg, tau=1.0), self.cfg.recipe, "cpu", torch.float32)

    def score_arm(self, arm: Arm, folder: Path, tokenizer: str) -> dict:
        """The arm's record, kept in scores.json and computed again only when the evaluation setting changes."""
        path = folder / "scores.json"
        cfg = self.cfg.sc_cfg if arm.claim == "self-correction" else 1.0
        setup = {"count": list(self.cfg.eval_count), "recovery_scales": list(self.cfg.recovery_scales),
                 "recovery_fractions": list(self.cfg.recovery_fractions), "cfg": cfg,
                 "free_generation": ["adherence", "attribute_recall", "extra_objects"]}
        if path.is_file() and json.loads(path.read_text())["metrics"]["eval"] == setup:
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        scenes = evaluation_scenes({n + 1: c for n, c in enumerate(self.cfg.eval_count) if c > 0})
        pipe = self._pipe(tokenizer, folder / "transformer.safetensors", cfg)
        recovery = recovery_curve(pipe, scenes, self.cfg.recovery_scales, self.cfg.recovery_fractions, cfg=1.0, tau=1.0)
        adherence = evaluate_pipeline(pipe, scenes, "1:1", seed=0, cfg=cfg, tau=1.0)
        counts = sorted(adherence.total)
        done = json.loads((folder / "done.json").read_text())
        metrics = {
            **heldout_likelihood(pipe, scenes),
            "adherence": round(sum(adherence.passed.values()) / len(scenes), 4),
            "adherence_per_objects": {str(n): round(adherence.accuracy(n), 4) for n in counts},
            # graded: the share of wanted objects with something of the right attribute in their cell, and how
            # many objects were drawn beyond those asked for (the parser's count minus the scene's, at least 0)
            "attribute_recall_per_objects": {str(n): {a: round(v / adherence.total[n], 4)
                                                      for a, v in adherence.recall_sum[n].items()} for n in counts},
            "extra_objects_per_objects": {str(n): round(adherence.extra_sum[n] / adherence.total[n], 3)
                                          for n in counts},
            "recovery": [p.to_dict() for p in recovery],
            "sampling": {"recovery": {"cfg": 1.0, "tau": 1.0}, "adherence": {"cfg": cfg, "tau": 1.0}},
            "steps": done["steps"], "scenes": len(scenes), "eval": setup,
            "eval_seconds": round(time.perf_counter() - t0, 1),
        }
        record = {"claim": arm.claim, "arm": arm.name, "seed": arm.seed, "head": arm.head,
                  "self_correction_strength": arm.strength, "tokenizer": tokenizer, "metrics": metrics,
                  "seconds": done["seconds"]}
        path.write_text(json.dumps(record, indent=1) + "\n")
        return record

    def bits_records(self) -> list[dict]:
        scenes = evaluation_scenes({n + 1: c for n, c in enumerate(self.cfg.eval_count) if c > 0})
        records = []
        for path in self.cfg.bits_tokenizers:
            t0 = time.perf_counter()
            tokenizer = load_model(path)
            metrics = tokenizer_on_scenes(tokenizer, scenes, self.cfg.bits_pixels)
            records.append({"claim": "bits", "arm": f"d{tokenizer.bits}", "seed": None, "tokenizer": path,
                            "metrics": metrics, "seconds": round(time.perf_counter() - t0, 1)})
        return records

    def tokenizer_record(self) -> dict:
        """The self-correction tokenizer's clean reconstructions of the held-out scenes at the claims' size."""
        t0 = time.perf_counter()
        scenes = evaluation_scenes({n + 1: c for n, c in enumerate(self.cfg.eval_count) if c > 0})
        schedule = next(iter(RECIPES[self.cfg.recipe].schedules.values()))
        with torch.no_grad():
            scores = evaluate_tokenizer(load_model(self.cfg.tokenizer), schedule, scenes)
        metrics = {"pixels": list(schedule.pixel_hw),
                   "parser_pass": {str(n): round(scores.accuracy(n), 4) for n in sorted(scores.total)},
                   "psnr_db": {str(n): round(scores.psnr_sum[n] / scores.total[n], 2) for n in sorted(scores.total)}}
        return {"claim": "tokenizer", "arm": "self-correction tokenizer", "seed": None, "tokenizer": self.cfg.tokenizer,
                "metrics": metrics, "seconds": round(time.perf_counter() - t0, 1)}

    def head_size_records(self) -> list[dict]:
        recipe = RECIPES[self.cfg.recipe]
        tokens = next(iter(recipe.schedules.values())).seq_len
        rows = index_head_sizes(recipe.transformer, tokens, self.cfg.batch_size, self.cfg.head_size_ds)
        return [{"claim": "head", "arm": "head-size", "seed": None, "metrics": r, "seconds": 0.0} for r in rows]


def _done(folder: Path, steps: int) -> bool:
    marker = folder / "done.json"
    return marker.is_file() and json.loads(marker.read_text())["steps"] == steps


def _train_seconds(folder: Path) -> float:
    """Training time over every sitting of a run: metrics.jsonl's clock restarts at each sitting."""
    total = last = 0.0
    path = folder / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        t = json.loads(line).get("time_s", 0.0)
        if t < last:
            total += last
        last = t
    return round(total + last, 1)


def check_inputs(cfg: ClaimsConfig) -> None:
    """ValueError for what would fail late: unknown recipe, missing tokenizers, a tokenizer that does not fit."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
    if not cfg.seeds or cfg.steps < 1:
        raise ValueError("need at least one seed and one step per arm")
    if 0.0 not in cfg.recovery_fractions:
        raise ValueError("the recovery fractions must include 0 (each model's own distance without flips)")
    schedule = next(iter(RECIPES[cfg.recipe].schedules.values()))
    for path in [cfg.tokenizer, *([cfg.head_tokenizer] if cfg.head_tokenizer else []), *cfg.bits_tokenizers]:
        if not Path(path).is_file():
            raise ValueError(f"no tokenizer at {path}")
    for path in [cfg.tokenizer, *([cfg.head_tokenizer] if cfg.head_tokenizer else [])]:
        patch = load_model(path).config.patch_size
        if patch != schedule.patch_size:
            raise ValueError(f"{path} has {patch} px per token; the {cfg.recipe} schedules need {schedule.patch_size}")


def run_claims(cfg: ClaimsConfig, only: Sequence[str] = CLAIMS) -> list[dict]:
    """Train and score every arm of the claims in `only` still to do, then write results.json, results.md and
    recovery.png with every record there is: the other claims' arms appear as far as earlier sittings scored them."""
    from .report import write_report

    check_inputs(cfg)
    runner = Runner(cfg)
    records = []
    head_tokenizer = runner.head_tokenizer() if "head" in only else None
    for arm in arms(cfg):
        if arm.claim not in only:
            scored = runner.out / arm.folder / "scores.json"
            records += [json.loads(scored.read_text())] if scored.is_file() else []
            continue
        tokenizer = cfg.tokenizer if arm.claim == "self-correction" else head_tokenizer
        folder = runner.train_arm(arm, tokenizer)
        records.append(runner.score_arm(arm, folder, tokenizer))
    records += runner.head_size_records()
    records.append(runner.tokenizer_record())
    bits = runner.out / "bits-scores.json"
    if "bits" in only:
        runner.out.mkdir(parents=True, exist_ok=True)
        bits.write_text(json.dumps(runner.bits_records(), indent=1) + "\n")
    records += json.loads(bits.read_text()) if bits.is_file() else []
    write_report(records, cfg)
    return records
