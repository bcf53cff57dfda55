"""What the app computes with the model beyond one generation.

Legend: B batch (1), d bits per latent cell, H/W the full latent grid, h/w one scale's grid, K scales.

- `scale_preview`: what the image looks like after scale k: F_k decoded at that scale's grid, enlarged with
  nearest neighbour to the output size (each latent cell a visible block, nothing invented between them).
- `reconstruct`: an image's multi-scale reconstruction, F_k decoded after every scale, with PSNR (paper Fig. 3),
  with the model's tokenizer or a general one (a `Codec`, see tokenizers.py).
- `tokenizer_self_correction`: what bitwise self-correction changes (paper Sec. 3.3, Algorithm 4). The same bits
  of the first scales are flipped in two ways:
    * without re-quantization: the flipped codes are summed into F, but the later scales keep the residuals and
      bits of the clean encoding, so the errors stay in F_K;
    * with re-quantization (Algorithm 4): every later residual is taken against the corrupted F, so the later
      scales' bits are the ones that correct the earlier mistakes, and F_K comes back closer to the clean one.
  Each series is measured against the input, against the clean encoding (what the flips can be corrected back
  to: a tokenizer that reconstructs an image poorly hides the correction in a PSNR against the input) and in
  feature space, |f - F_k| / |f|; `verdict` turns the last scale's numbers into the sentence the app prints.
- `generation_intervention`: the transformer's version of the same question: flip a fraction of the sampled bits
  at one scale (an `Intervention`) and see how the later scales react, beside the clean run with the same seed.
- `variations`: keep the first k scales of a result (or of an encoded image) and resample the rest;
  `layout_scales` says how many scales of an uploaded image to keep so that its layout stays.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..images import fit, psnr, to_pil, to_tensor
from ..pipeline import InfinityPipeline
from ..sampling import Intervention, ScaleEvent
from ..schedules import nearest_schedule
from ..tokenizer import BitwiseTokenizer
from ..tokenizer.quantizer import Grid, area_resize
from ..tokenizer.self_correction import flip_bits, fraction_mask
from .tokenizers import Codec
from .views import upscale_nearest

CLEAN, PLAIN_FLIPS, REQUANTIZED = "clean", "flipped, not re-quantized", "flipped, re-quantized (Alg. 4)"
SERIES_NAMES = (CLEAN, PLAIN_FLIPS, REQUANTIZED)


def preview_grid(hw: Grid, full: Grid) -> Grid:
    """The latent grid a preview of the scale with latent grid `hw` is decoded at: that grid, at most half the full
    grid per side (the decoder's cost is its area, so all previews cost less than one full decode), at least 2x2
    (a GroupNorm of one channel per group needs two values)."""
    return tuple(max(min(a, -(-b // 2)), min(2, b)) for a, b in zip(hw, full))


@torch.no_grad()
def scale_preview(pipe: InfinityPipeline, event: ScaleEvent) -> Image.Image:
    """The image after `event`'s scale at the output size: the final image on the last event; before it, F_k
    area-resized to `preview_grid`, decoded, and enlarged with nearest neighbour."""
    if event.image_B3HW is not None:
        return to_pil(event.image_B3HW[0])
    s, (h, w) = event.spatial_patch, event.bits_Bhwd.shape[1:3]
    full = tuple(event.F_BdHW.shape[-2:])
    small = pipe.tokenizer.decode(area_resize(event.F_BdHW, preview_grid((s * h, s * w), full)))
    p = pipe.tokenizer.config.patch_size
    return upscale_nearest(to_pil(small[0]), (full[1] * p, full[0] * p))


@dataclass
class Reconstruction:
    """The decoded F_k after every scale of one encoding, and each one's PSNR (dB) against the input."""

    images: list[Image.Image]
    psnr: list[float]


def nearest_aspect_ratio(pipe: InfinityPipeline, image: Image.Image) -> str:
    """The model's aspect ratio closest to the image's (in log height/width)."""
    return nearest_schedule(pipe.schedules, image.height / image.width)


def _fitted(codec: Codec, image: Image.Image, aspect_ratio: str) -> tuple[Image.Image, torch.Tensor]:
    """The image resized and center-cropped to the aspect ratio's size, as PIL and as (1, 3, H, W) on the
    tokenizer's device."""
    fitted = fit(image.convert("RGB"), codec.schedules[aspect_ratio].pixel_hw)
    return fitted, to_tensor(fitted).to(next(codec.tokenizer.parameters()).device)


@torch.no_grad()
def reconstruct(codec: Codec, image: Image.Image, aspect_ratio: str) -> tuple[Image.Image, Reconstruction]:
    """(the fitted input, its reconstruction after every scale) with `codec`'s tokenizer and schedule."""
    fitted, x_13HW = _fitted(codec, image, aspect_ratio)
    codes = codec.tokenizer.encode_scales(x_13HW, codec.schedules[aspect_ratio].scales)
    images, values = [], []
    for F_1dHW in codes.cumulative:
        y_13HW = codec.tokenizer.decode(F_1dHW)
        images.append(to_pil(y_13HW[0]))
        values.append(float(psnr(y_13HW, x_13HW)[0]))
    return fitted, Reconstruction(images, values)


@torch.no_grad()
def best_codec(codecs: Sequence[Codec], image: Image.Image, aspect_value: str) -> tuple[Codec, dict[str, float]]:
    """The codec whose final reconstruction of `image` has the highest PSNR, and every codec's PSNR (dB) by label.
    `aspect_value`: a ratio name or "auto", resolved per codec (`Codec.aspect_ratio`). ValueError when the codecs
    encode the image at different sizes."""
    scores, sizes = {}, set()
    for codec in codecs:
        name = codec.aspect_ratio(aspect_value, image)
        _, x_13HW = _fitted(codec, image, name)
        sizes.add(tuple(x_13HW.shape[-2:]))
        if len(sizes) > 1:
            raise ValueError("These tokenizers encode the image at different sizes, so their PSNRs do not compare: "
                             "choose one.")
        codes = codec.tokenizer.encode_scales(x_13HW, codec.schedules[name].scales)
        scores[codec.label] = float(psnr(codec.tokenizer.decode(codes.quantized), x_13HW)[0])
    best = max(codecs, key=lambda c: scores[c.label])
    return best, scores


def flip_masks(shapes: Sequence[torch.Size], num_scales: int, fraction: float, seed: int) -> list[torch.Tensor | None]:
    """Per scale: a mask of exactly round(fraction * numel) bits for the first `num_scales` scales, None after.
    Drawn from the shapes alone (one CPU generator of `seed`), so both flip variants flip the same bits."""
    g = torch.Generator().manual_seed(seed)
    return [fraction_mask(shape, fraction, g) if k < num_scales else None for k, shape in enumerate(shapes)]


@dataclass
class Series:
    """One series of the self-correction explorer: its decoded F_k after every scale and three measures of each:
    PSNR (dB) against the input and against the clean encoding's image at the same scale, and the feature error
    |f - F_k| / |f| (the encoder's features f against the running sum, relative L2: what the quantizer sees)."""

    images: list[Image.Image]
    psnr_input: list[float]
    psnr_clean: list[float]
    feature_error: list[float]


@dataclass
class SelfCorrectionResult:
    input: Image.Image  # the fitted input
    series: dict[str, Series]  # CLEAN, PLAIN_FLIPS, REQUANTIZED
    flipped: list[int]  # bits flipped at each scale


@dataclass(frozen=True)
class Verdict:
    """What the final scale's numbers say about re-quantization: +1 helped, -1 hurt, 0 no difference, per measure
    (closer to the clean encoding in PSNR; smaller feature error), and the sentence that says it."""

    psnr_clean: int
    feature_error: int
    text: str


def _sign(better: float, worse: float, tolerance: float) -> int:
    return 0 if abs(better - worse) <= tolerance else (1 if better > worse else -1)


def verdict(result: SelfCorrectionResult, psnr_tolerance: float = 0.05, error_tolerance: float = 1e-3) -> Verdict:
    """Compare the two flipped series at the last scale, from the numbers alone."""
    plain, requant = result.series[PLAIN_FLIPS], result.series[REQUANTIZED]
    by_psnr = _sign(requant.psnr_clean[-1], plain.psnr_clean[-1], psnr_tolerance)
    by_error = _sign(plain.feature_error[-1], requant.feature_error[-1], error_tolerance)
    numbers = (f"after the last scale the re-quantized series is {requant.psnr_clean[-1]:.2f} dB from the clean "
               f"encoding's image against {plain.psnr_clean[-1]:.2f} dB without re-quantization, and its features "
               f"are {requant.feature_error[-1]:.3f} from f against {plain.feature_error[-1]:.3f}")
    if by_psnr > 0 and by_error >= 0 or by_psnr >= 0 and by_error > 0:
        text = f"Re-quantization helped: {numbers}. The later scales corrected part of the flips (Algorithm 4)."
    elif by_psnr < 0 and by_error <= 0 or by_psnr <= 0 and by_error < 0:
        text = f"Here re-quantization did not help: {numbers}."
    elif by_psnr == by_error == 0:
        text = f"Re-quantization made no measurable difference here: {numbers}."
    else:
        text = f"The two measures disagree here: {numbers}."
    return Verdict(by_psnr, by_error, text)


def _series(tok: BitwiseTokenizer, cumulative: Sequence[torch.Tensor], x_13HW: torch.Tensor, f_1dHW: torch.Tensor,
            clean: Sequence[torch.Tensor] | None) -> tuple[Series, list[torch.Tensor]]:
    """The measures of one series and its decoded images (as tensors, for the next series' PSNR to clean)."""
    decoded = [tok.decode(F_1dHW) for F_1dHW in cumulative]
    norm = float(f_1dHW.norm())
    series = Series(
        [to_pil(y[0]) for y in decoded],
        [float(psnr(y, x_13HW)[0]) for y in decoded],
        [float(psnr(y, c)[0]) for y, c in zip(decoded, clean or decoded)],
        [float((f_1dHW - F).norm()) / max(norm, 1e-12) for F in cumulative],
    )
    return series, decoded


@torch.no_grad()
def tokenizer_self_correction(
    codec: Codec, image: Image.Image, aspect_ratio: str, flip_scales: int, fraction: float, seed: int
) -> SelfCorrectionResult:
    """F_k series of the clean encoding and of the two ways of flipping `fraction` of the bits of the first
    `flip_scales` scales (see the module docstring), each measured against the input, the clean encoding and f."""
    fitted, x_13HW = _fitted(codec, image, aspect_ratio)
    tok, scales = codec.tokenizer, codec.schedules[aspect_ratio].scales
    f_BdHW = tok.encode(x_13HW)
    clean = tok.quantize(f_BdHW, scales)
    masks = flip_masks([b.shape for b in clean.bits], flip_scales, fraction, seed)

    # Without re-quantization: the clean bits, flipped where masked, summed as they are.
    plain_bits = [b if m is None else flip_bits(b, m) for b, m in zip(clean.bits, masks)]
    plain = tok.cumulative_from_bits(plain_bits, scales[-1])

    # With re-quantization: the quantizer applies the same flips and recomputes every later residual.
    def flips(k: int, bits_Bhwd: torch.Tensor) -> torch.Tensor | None:
        return None if masks[k] is None else masks[k].to(bits_Bhwd.device)

    requantized = tok.quantize(f_BdHW, scales, flips=flips)
    clean_series, clean_images = _series(tok, clean.cumulative, x_13HW, f_BdHW, None)
    series = {
        CLEAN: clean_series,
        PLAIN_FLIPS: _series(tok, plain, x_13HW, f_BdHW, clean_images)[0],
        REQUANTIZED: _series(tok, requantized.cumulative, x_13HW, f_BdHW, clean_images)[0],
    }
    return SelfCorrectionResult(fitted, series, [0 if m is None else int(m.sum()) for m in masks])


@dataclass
class InterventionResult:
    clean: list[Image.Image]  # previews of the clean run, every scale (the last is the image)
    flipped: list[Image.Image]  # the same with the intervention
    bits_changed: list[float]  # fraction of the bits that differ from the clean run, per scale
    flipped_bits: int  # bits flipped by the intervention itself


def generation_intervention(
    pipe: InfinityPipeline,
    prompt: str,
    seed: int,
    intervention: Intervention,
    **options,
) -> InterventionResult:
    """Two runs with the same prompt, seed and options (keyword arguments of `pipe.stream`): clean, and with
    `intervention`. The generator is the same, so every difference comes from the flipped bits."""
    clean = list(pipe.stream(prompt, seed=seed, preview=False, **options))
    flipped = list(pipe.stream(prompt, seed=seed, preview=False, intervention=intervention, **options))
    changed = [float((a.bits_Bhwd != b.bits_Bhwd).float().mean()) for a, b in zip(clean, flipped)]
    bits_k = clean[intervention.scale_index].bits_Bhwd
    return InterventionResult(
        [scale_preview(pipe, e) for e in clean],
        [scale_preview(pipe, e) for e in flipped],
        changed,
        round(intervention.fraction * bits_k.numel()),
    )


def layout_scales(psnr_db: Sequence[float]) -> int:
    """How many scales of an image's encoding to keep for variations that keep its layout: the fewest whose
    reconstruction has made half of the encoding's PSNR gain over its first scale (at most K - 1, so one is left
    to sample). `psnr_db`: the reconstruction's PSNR after each scale (`reconstruct`).

    Why measured: a tokenizer need not put an image's layout in its first scales. The embedded one shows the
    example scene's objects only from its 8x8 scale on (scales 1-4 of 7 carry little more than the background),
    where a generation's own first scales already fix its layout."""
    K, first, last = len(psnr_db), psnr_db[0], psnr_db[-1]
    enough = next(k for k, p in enumerate(psnr_db, 1) if p - first >= (last - first) / 2)
    return max(1, min(enough, K - 1))


def variations(
    pipe: InfinityPipeline,
    prefix_bits: Sequence[torch.Tensor],
    prompt: str,
    seeds: Sequence[int],
    **options,
) -> Iterator[Image.Image]:
    """One image per seed, each with the given bits for its first len(prefix_bits) scales and new samples after."""
    for seed in seeds:
        for event in pipe.stream(prompt, seed=seed, preview=False, prefix_bits=prefix_bits, **options):
            pass
        yield to_pil(event.image_B3HW[0])
