"""The direct measure of bitwise self-correction: how far a model recovers from wrong bits in its own history.

For each held-out scene: the tokenizer's true bits of scales 1..k are given to the sampler, a fraction p of the
bits of scale k is flipped (`Intervention`), and the model samples scales k+1..K. The final image is compared with
the clean reconstruction (all K scales' true bits decoded): PSNR, and whether the scene parser still reads the
scene. Two references come with every point, computed on the same scenes:
- `reference_psnr_db`: no correction at all: the flipped scale k followed by the true bits of k+1..K (what a
  model that reproduced the clean residuals exactly, ignoring the error, would draw); its distance from the clean
  reconstruction is the damage the flips do;
- the same model's point at p = 0 (when asked for): the distance that sampling alone puts between the result and
  the clean reconstruction.
A model trained with self-correction (paper Sec. 3.3, Algorithm 4) should lose less between p = 0 and p > 0.

Sampling is the same for every model compared: tau, cfg, the generator's seed per batch and the flipped positions
(`Intervention.seed`) are fixed by the caller, so two models see the same scenes, prefixes and flips.

Legend: B scenes of a batch, K scales, d bits per token, s spatial patch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.scene_parser import parse_image, scene_matches
from ..data.shapes import Scene, caption, render
from ..images import psnr
from ..sampling import Intervention, sample_scales
from ..tokenizer.model import latent_scales, patchify_bits, unpatchify_bits
from .shapes import to_tensor_np, to_uint8


@dataclass(frozen=True)
class RecoveryPoint:
    """Means over the scenes for flipping fraction `p` of scale `k` (1-based) and sampling the rest."""

    k: int
    p: float
    scenes: int
    psnr_db: float  # the sampled result against the clean reconstruction
    parser_pass: float  # share of the results the scene parser reads as their scene
    reference_psnr_db: float  # no correction: the flipped scale k, then the true bits of k+1..K
    reference_parser_pass: float
    psnr_per_scene_db: tuple[float, ...] = ()  # the result's PSNR of every scene, in order (not in to_dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["psnr_per_scene_db"]
        return d


def _check(K: int, ks: Sequence[int], ps: Sequence[float]) -> None:
    if not ks or any(not 1 <= k < K for k in ks):
        raise ValueError(f"scales k must be in 1..{K - 1} (some scale must be left to sample), got {list(ks)}")
    if not ps or any(not 0 <= p <= 1 for p in ps):
        raise ValueError(f"fractions p must be in [0, 1], got {list(ps)}")


@dataclass
class EncodedScenes:
    """A batch of held-out scenes through the tokenizer: what every model compared is given."""

    scenes: Sequence[Scene]
    clean_B3HW: torch.Tensor  # all K scales' true bits decoded: what recovery is measured against
    true_bits: list[torch.Tensor]  # per scale, (B, h, w, d) per transformer token, as the sampler takes them
    text_BTE: torch.Tensor
    lens_B: torch.Tensor


@torch.no_grad()
def encode_scenes(pipe, scenes: Sequence[Scene], aspect_ratio: str = "1:1") -> EncodedScenes:
    """Render `scenes`, encode them with `pipe`'s tokenizer and their captions with its text encoder."""
    schedule, s = pipe.schedule(aspect_ratio), pipe.spatial_patch
    H, W = schedule.pixel_hw
    x_B3HW = torch.cat([to_tensor_np(render(sc, H, W)) for sc in scenes]).to(pipe.device)
    codes = pipe.tokenizer.encode_scales(x_B3HW, latent_scales(schedule.scales, s))
    text_BTE, lens_B = pipe.text_encoder.encode([caption(sc) for sc in scenes])
    return EncodedScenes(scenes, pipe.tokenizer.decode(codes.quantized), [patchify_bits(b, s) for b in codes.bits],
                         text_BTE.to(pipe.device, pipe.transformer.pos_start.dtype), lens_B.to(pipe.device))


@torch.no_grad()
def intervene(pipe, encoded: EncodedScenes, k: int, p: float, *, aspect_ratio: str = "1:1", cfg: float = 1.0,
              tau: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's result, the no-correction reference), (B, 3, H, W) each: the true bits of scales 1..k with
    fraction `p` of scale k flipped (positions drawn from `seed`), then scales k+1..K sampled with generator
    `seed` (the result) or taken from the true bits (the reference). The reference's scale k is the very bits
    the sampler's scale k entered F with, so both start from the same flips."""
    schedule, s = pipe.schedule(aspect_ratio), pipe.spatial_patch
    _check(schedule.num_scales, [k], [p])
    true_bits = encoded.true_bits
    events = sample_scales(pipe.transformer, pipe.tokenizer, encoded.text_BTE, encoded.lens_B, schedule, cfg=cfg,
                           tau=tau, generator=torch.Generator(pipe.device).manual_seed(seed),
                           prefix_bits=true_bits[:k], intervention=Intervention(k - 1, p, seed))
    flipped = list(true_bits)
    for event in events:
        if event.scale_index == k - 1:
            flipped[k - 1] = event.bits_Bhwd  # the flipped scale, as the sampler used it
    return event.image_B3HW, pipe.tokenizer.decode_bits([unpatchify_bits(b, s) for b in flipped])


@torch.no_grad()
def recovery_curve(pipe, scenes: Sequence[Scene], ks: Sequence[int], ps: Sequence[float], *, aspect_ratio: str = "1:1",
                   cfg: float = 1.0, tau: float = 1.0, seed: int = 0, batch_size: int = 16) -> list[RecoveryPoint]:
    """One `RecoveryPoint` per (k, p), k-major; `pipe` is an InfinityPipeline (tokenizer, transformer, text encoder).

    Batch i of the scenes samples with generator seed `seed + i` and flips the positions of seed `seed + i`, so
    the same call on another model sees the same prefixes, flips and random stream.
    """
    _check(pipe.schedule(aspect_ratio).num_scales, ks, ps)
    sums = {(k, p): np.zeros(4) for k in ks for p in ps}
    per_scene: dict[tuple[int, float], list[float]] = {(k, p): [] for k in ks for p in ps}
    for i, start in enumerate(range(0, len(scenes), batch_size)):
        encoded = encode_scenes(pipe, scenes[start:start + batch_size], aspect_ratio)
        for k in ks:
            for p in ps:
                result_B3HW, reference_B3HW = intervene(pipe, encoded, k, p, aspect_ratio=aspect_ratio, cfg=cfg,
                                                        tau=tau, seed=seed + i)
                scored = scores(result_B3HW, reference_B3HW, encoded.clean_B3HW, encoded.scenes)
                sums[k, p] += scored.sum(0)
                per_scene[k, p] += scored[:, 0].round(4).tolist()
    n = len(scenes)
    return [RecoveryPoint(k, p, n, *(sums[k, p] / n).round(4).tolist(), tuple(per_scene[k, p])) for k in ks for p in ps]


def scores(result_B3HW: torch.Tensor, reference_B3HW: torch.Tensor, clean_B3HW: torch.Tensor,
           scenes: Sequence[Scene]) -> np.ndarray:
    """(B, 4) per scene: [PSNR against the clean reconstruction, parser pass] of the result, then of the reference."""
    out = np.zeros((len(scenes), 4))
    for j, images_B3HW in enumerate((result_B3HW, reference_B3HW)):
        out[:, 2 * j] = psnr(images_B3HW, clean_B3HW).cpu().numpy()
        out[:, 2 * j + 1] = [scene_matches(parse_image(img), sc) for img, sc in zip(to_uint8(images_B3HW), scenes)]
    return out


def recovery_table(points: Sequence[RecoveryPoint], title: str) -> str:
    header = f"{'k':>3} {'p':>6} {'scenes':>7} {'PSNR dB':>8} {'parser':>7} {'no-correction PSNR':>19} {'parser':>7}"
    lines = [title, header]
    for r in points:
        lines.append(f"{r.k:>3} {r.p:>6.2f} {r.scenes:>7} {r.psnr_db:>8.2f} {r.parser_pass:>7.3f}"
                     f" {r.reference_psnr_db:>19.2f} {r.reference_parser_pass:>7.3f}")
    return "\n".join(lines)
