"""Evaluation on the held-out shapes scenes: prompt adherence of a pipeline, reconstruction of a tokenizer.

Both are scored with the deterministic scene parser (infinity.data.scene_parser): an image passes only if every
object has the right colour, shape, size and position, and nothing else is there. PSNR alone hides wrong colours
and shapes (a small object barely moves the mean squared error), so the tokenizer gets both.

`teacher_forced_errors` looks inside the transformer instead: fed the ground truth's bits of every earlier scale
(teacher forcing, as in training), how many bits of each scale does it predict wrong, on the tokens that draw
objects and on the background? On training scenes as against held-out ones it tells underfitting from
overfitting.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..data.objects import object_token_weights
from ..data.scene_parser import (
    ATTRIBUTES,
    ParsedScene,
    fails_only_by_extras,
    object_recall,
    parse_image,
    scene_matches,
)
from ..data.shapes import Scene, ShapesDataset, caption, held_out_scenes, render
from ..images import psnr, to_tensor
from ..schedules import Schedule
from ..tokenizer import BitwiseTokenizer
from ..tokenizer.model import latent_scales
from ..transformer.losses import predicted_bits

logger = logging.getLogger(__name__)


@dataclass
class Scores:
    """Per number of objects: how many images, how many passed the parser, the mean share of objects with each
    attribute right (`object_recall`) and (tokenizers) mean PSNR."""

    total: dict[int, int] = field(default_factory=dict)
    passed: dict[int, int] = field(default_factory=dict)
    recall_sum: dict[int, dict[str, float]] = field(default_factory=dict)
    psnr_sum: dict[int, float] = field(default_factory=dict)
    extras_only: dict[int, int] = field(default_factory=dict)  # failed only because something extra was there
    extra_sum: dict[int, int] = field(default_factory=dict)  # objects parsed beyond the scene's count

    def add(self, n: int, parsed: ParsedScene, scene: Scene, psnr_db: float | None = None) -> None:
        self.total[n] = self.total.get(n, 0) + 1
        self.passed[n] = self.passed.get(n, 0) + int(scene_matches(parsed, scene))
        self.extras_only[n] = self.extras_only.get(n, 0) + int(fails_only_by_extras(parsed, scene))
        self.extra_sum[n] = self.extra_sum.get(n, 0) + max(0, len(parsed.objects) - len(scene.objects))
        sums = self.recall_sum.setdefault(n, dict.fromkeys(ATTRIBUTES, 0.0))
        for attribute, value in object_recall(parsed, scene).items():
            sums[attribute] += value
        if psnr_db is not None:
            self.psnr_sum[n] = self.psnr_sum.get(n, 0.0) + psnr_db

    def accuracy(self, n: int) -> float:
        return self.passed[n] / self.total[n]

    def to_dict(self) -> dict:
        out = {}
        for n in sorted(self.total):
            row = {"images": self.total[n], "passed": self.passed[n], "accuracy": round(self.accuracy(n), 4),
                   "failed_only_by_extras": self.extras_only[n]}
            row.update({a: round(v / self.total[n], 3) for a, v in self.recall_sum[n].items()})
            if n in self.psnr_sum:
                row["psnr_db"] = round(self.psnr_sum[n] / self.total[n], 2)
            out[str(n)] = row
        return out

    def table(self, title: str) -> str:
        has_psnr = bool(self.psnr_sum)
        header = (f"{'objects':>8} {'images':>7} {'passed':>7} {'accuracy':>9} {'extras only':>11}"
                  + "".join(f" {a:>8}" for a in ATTRIBUTES))
        lines = [title, header + (f" {'PSNR dB':>8}" if has_psnr else "")]
        for n, row in self.to_dict().items():
            line = f"{n:>8} {row['images']:>7} {row['passed']:>7} {row['accuracy']:>9.3f} {row['failed_only_by_extras']:>11}"
            line += "".join(f" {row[a]:>8.3f}" for a in ATTRIBUTES)
            lines.append(line + (f" {row['psnr_db']:>8.2f}" if has_psnr else ""))
        return "\n".join(lines)


def evaluation_scenes(counts: dict[int, int], seed: int = 0, split: str = "heldout") -> list[Scene]:
    """counts[n] fixed scenes of n objects each: held out (distinct combinations never trained on) or, with
    split="train", drawn from the training stream (which a model may have seen)."""
    if split == "heldout":
        return [s for n, c in sorted(counts.items()) for s in held_out_scenes(n, c, seed)]
    if split != "train":
        raise ValueError(f"split must be heldout or train, got {split!r}")
    return [ShapesDataset("train", seed=1000 + seed, num_objects=(n,)).scene(i)
            for n, c in sorted(counts.items()) for i in range(c)]


@torch.no_grad()
def evaluate_tokenizer(tokenizer: BitwiseTokenizer, schedule: Schedule, scenes: Sequence[Scene], batch_size: int = 16) -> Scores:
    """Reconstruct held-out renders through all scales; PSNR and parser agreement with the ground truth."""
    H, W = schedule.pixel_hw
    device = next(tokenizer.parameters()).device
    scores = Scores()
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        x = torch.cat([to_tensor_np(render(s, H, W)) for s in chunk]).to(device)
        recon = tokenizer.decode(tokenizer.encode_scales(x, schedule.scales).quantized)
        for scene, r, p in zip(chunk, to_uint8(recon), psnr(recon, x).tolist()):
            scores.add(len(scene.objects), parse_image(r), scene, p)
    return scores


def evaluate_pipeline(pipe, scenes: Sequence[Scene], aspect_ratio: str = "1:1", seed: int = 0,
                      given_scales: int = 0, **sampling) -> Scores:
    """Generate one image per held-out caption (seed + i) and check it with the parser.

    given_scales: the first scales are not sampled but taken from the tokenizer's bits of the scene's ground-truth
    render, which locates the errors: with k given scales only scales k+1..K can go wrong (all K: the tokenizer's
    reconstruction).
    """
    num_scales = pipe.schedule(aspect_ratio).num_scales
    if not 0 <= given_scales <= num_scales:
        raise ValueError(f"given_scales must be in 0..{num_scales} for {aspect_ratio}, got {given_scales}")
    scores = Scores()
    for i, scene in enumerate(scenes):
        image = generate_for_scene(pipe, scene, aspect_ratio, seed + i, given_scales, **sampling)
        scores.add(len(scene.objects), parse_image(np.asarray(image)), scene)
    return scores


OBJECT_COVER = 0.05  # a token draws an object when objects cover more than this share of its cell


@dataclass
class ScaleErrors:
    """Teacher-forced bit errors of one scale: object tokens (cells objects cover) and background tokens."""

    grid: tuple[int, int]
    object_tokens: int
    object_bit_error: float  # NaN when no token of the scale draws an object
    background_bit_error: float


def errors_table(rows: Sequence[ScaleErrors], title: str) -> str:
    lines = [title, f"{'scale':>6} {'grid':>7} {'object tokens':>14} {'object bit error':>17} {'background bit error':>21}"]
    for k, r in enumerate(rows):
        lines.append(f"{k + 1:>6} {r.grid[0]:>3}x{r.grid[1]:<3} {r.object_tokens:>14} {r.object_bit_error:>17.3f}"
                     f" {r.background_bit_error:>21.3f}")
    return "\n".join(lines)


@torch.no_grad()
def teacher_forced_errors(pipe, scenes: Sequence[Scene], aspect_ratio: str = "1:1", cfg: float = 1.0,
                          batch_size: int = 16) -> list[ScaleErrors]:
    """Per scale, the share of bits the transformer gets wrong (most likely bit against the tokenizer's bit of the
    scene's render) when every earlier scale is the ground truth's; with cfg != 1, of the guided logits."""
    schedule = pipe.schedule(aspect_ratio)
    H, W = schedule.pixel_hw
    s, device = pipe.spatial_patch, pipe.device
    wrong_obj = torch.zeros(schedule.num_scales)
    n_obj, wrong_bg, n_bg = torch.zeros_like(wrong_obj), torch.zeros_like(wrong_obj), torch.zeros_like(wrong_obj)
    bounds = torch.tensor([0] + [h * w for h, w in schedule.scales]).cumsum(0)
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        x = torch.cat([to_tensor_np(render(sc, H, W)) for sc in chunk]).to(device)
        codes = pipe.tokenizer.quantize(pipe.tokenizer.encode(x), latent_scales(schedule.scales, s))
        x_BLd = pipe.tokenizer.teacher_forcing_inputs(codes, s).to(pipe.transformer.pos_start.dtype)
        targets_BLd = pipe.tokenizer.targets(codes, s)
        text_BTE, lens_B = pipe.text_encoder.encode([caption(sc) for sc in chunk])
        text_BTE, lens_B = text_BTE.to(device, x_BLd.dtype), lens_B.to(device)
        logits_BLV = pipe.transformer(text_BTE, lens_B, x_BLd, schedule).float()
        if cfg != 1:
            drop_B = torch.ones(len(chunk), dtype=torch.bool, device=device)
            uncond_BLV = pipe.transformer(text_BTE, lens_B, x_BLd, schedule, drop_text_B=drop_B).float()
            logits_BLV = cfg * logits_BLV + (1 - cfg) * uncond_BLV
        B, L, d = targets_BLd.shape
        predicted_BLd = predicted_bits(logits_BLV, d, pipe.transformer.config.head)  # either head
        wrong_BL = (predicted_BLd != targets_BLd).float().mean(-1).cpu()
        is_obj_BL = (object_token_weights(x, schedule, 1.0) - 1).cpu() > OBJECT_COVER
        for k in range(schedule.num_scales):
            w, o = wrong_BL[:, bounds[k]:bounds[k + 1]], is_obj_BL[:, bounds[k]:bounds[k + 1]]
            wrong_obj[k] += w[o].sum()
            n_obj[k] += o.sum()
            wrong_bg[k] += w[~o].sum()
            n_bg[k] += (~o).sum()
    return [ScaleErrors(tuple(hw), int(n_obj[k]), float(wrong_obj[k] / n_obj[k]) if n_obj[k] else float("nan"),
                        float(wrong_bg[k] / n_bg[k]) if n_bg[k] else float("nan"))
            for k, hw in enumerate(schedule.scales)]


def generate_for_scene(pipe, scene: Scene, aspect_ratio: str, seed: int, given_scales: int = 0, **sampling) -> Image.Image:
    """The pipeline's image for the scene's caption, its first `given_scales` scales from the ground truth."""
    prefix_bits = None
    if given_scales:
        H, W = pipe.schedule(aspect_ratio).pixel_hw
        prefix_bits = pipe.encode_image(Image.fromarray(render(scene, H, W)), aspect_ratio)[:given_scales]
    return pipe(caption(scene), aspect_ratio=aspect_ratio, seed=seed, prefix_bits=prefix_bits, **sampling).image


def to_tensor_np(img_HW3: np.ndarray) -> torch.Tensor:
    return to_tensor(Image.fromarray(img_HW3))


def to_uint8(x_B3HW: torch.Tensor) -> list[np.ndarray]:
    x = ((x_B3HW.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).numpy())
