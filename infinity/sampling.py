"""Next-scale sampling: the autoregressive loop over scales, as a generator of one event per scale.

Legend: B batch, d bits per transformer token, h/w one scale's token grid, l = h*w tokens of one scale,
V = 2d logits per token, H/W the full latent grid, K scales, T text tokens, E text channels, s spatial patch.

Per scale k (paper Sec. 3.1 and Algorithm 2 of the official inference):
  1. logits (2B, l, V) from the transformer, the batch doubled as [prompts; unconditional text] when any scale
     uses classifier-free guidance (the unconditional half is the learned empty prompt, or a negative prompt);
  2. both halves divided by tau, then combined as cfg * cond + (1 - cfg) * uncond;
  3. every bit sampled from its 2 logits after top-k / top-p filtering (or taken from `prefix_bits`);
  4. optionally a fraction of the bits flipped (an `Intervention`, to see how later scales react);
  5. codes (2b - 1)/sqrt(d) upsampled bilinearly to the full grid and added to F (the last scale as is);
     scale k+1's input is F resized bilinearly to its grid.
The app, the CLI and the tests all consume the same `ScaleEvent` stream.

Previews (optional) are cheap on purpose: F_k holds detail only down to scale k's grid, so it is area-resized to
that grid (at most half the last grid per side) before decoding, and the decoded image is upsampled to the full
size. Decoding costs the area of the grid, so all previews together cost about one full decode or less instead
of one per scale (the last event's preview is the final image itself). `preview_grid` gives the grid.

`timer` (optional) is entered around every stage, `with timer(stage, scale_index):`, with the stages of
`STAGES`; `python -m infinity.bench` uses it to time each stage without a second copy of this loop.

Spatial patchify (Infinity-8B): when a transformer token carries s*s times the tokenizer's bits (56 = 4 * 14),
the schedule's grids are token grids and the tokenizer works at s times their size, as in the official code:
a scale's bits (B, h, w, s*s*d') are unpatchified to the tokenizer's (B, s*h, s*w, d') before step 5, F lives
at the latent grid (s*H, s*W), and the next input is F resized to (s*h', s*w') then patchified. s is derived
from the two models' bit counts (`spatial_patch`); with s = 1 all of this is the identity.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .schedules import Schedule
from .tokenizer import BitwiseTokenizer
from .tokenizer.model import latent_scales, spatial_patch, unpatchify_bits
from .tokenizer.quantizer import Grid, area_resize, bilinear_resize
from .tokenizer.self_correction import flip_fraction
from .transformer import Infinity

logger = logging.getLogger(__name__)

# What `timer` is entered around, in order; the per-scale ones get the scale index, the others None.
STAGES = (
    "conditioning",  # text conditioning of both CFG halves (norm, SOS pool, cross-attention features), KV cache
    "transformer",  # model.step: one scale's logits, both CFG halves
    "sampling",  # CFG combine, probabilities, bit draws, prefix and intervention
    "update",  # bits -> codes, F_k, the next scale's input
    "preview",  # the preview decode of a scale before the last
    "decode",  # the decode of F_K into the image
)
StageTimer = Callable[[str, "int | None"], AbstractContextManager]


def untimed(stage: str, scale_index: int | None = None) -> AbstractContextManager:
    """The timer that times nothing (the default)."""
    return nullcontext()


def preview_grid(hw: Grid, full: Grid) -> Grid:
    """The latent grid a preview of the scale with latent grid `hw` is decoded at: that grid, at most half of the
    full grid per side (rounded up) and at least 2 cells per side (the decoder's group norms need more than one
    value per group). The decoder's cost is proportional to the area, so the previews of a whole schedule cost
    about one full decode or less (0.73 for the 0.06M schedules, 1.1 for the 13 scales of 1M)."""

    def side(n: int, full_n: int) -> int:
        low = min(2, full_n)
        return min(max(n, low), max(low, -(-full_n // 2)))

    return side(hw[0], full[0]), side(hw[1], full[1])


def decode_preview(tokenizer: BitwiseTokenizer, F_BdHW: torch.Tensor, hw: Grid) -> torch.Tensor:
    """A quick look at F_k (B, d, H, W) after the scale with latent grid `hw`: the image (B, 3, H*p, W*p) in
    [-1, 1] of F_k area-resized to `preview_grid(hw)`, decoded, and upsampled bilinearly to the full size."""
    full = tuple(F_BdHW.shape[-2:])
    image_B3hw = tokenizer.decode(area_resize(F_BdHW, preview_grid(hw, full)))
    p = tokenizer.config.patch_size
    return bilinear_resize(image_B3hw, (full[0] * p, full[1] * p)).clamp(-1, 1)


@dataclass(frozen=True)
class Intervention:
    """Flip `fraction` of the bits of scale `scale_index` after sampling it, positions drawn with `seed`."""

    scale_index: int
    fraction: float
    seed: int = 0


@dataclass
class ScaleEvent:
    """What the sampler produced at one scale."""

    scale_index: int
    num_scales: int
    bits_Bhwd: torch.Tensor  # uint8 {0,1}: the bits that entered F (sampled, from the prefix, or flipped), per token
    probs_Bhwd: torch.Tensor  # p(bit = 1) after CFG and tau, before top-k/top-p: the model's uncertainty
    logits_BlV: torch.Tensor  # the CFG-combined, tau-scaled logits the bits were drawn from
    F_BdHW: torch.Tensor  # running sum of the codes of scales 0..k at the full latent grid (tokenizer bits)
    preview_B3HW: torch.Tensor | None = None  # a quick decode of F_k in [-1, 1] (`decode_preview`), when asked for
    image_B3HW: torch.Tensor | None = None  # decode of F_K in [-1, 1], on the last event only
    spatial_patch: int = 1  # s: latent cells per token side (2 for Infinity-8B)

    @property
    def is_last(self) -> bool:
        return self.scale_index == self.num_scales - 1

    @property
    def latent_bits_Bhwd(self) -> torch.Tensor:
        """The bits in the tokenizer's layout (B, s*h, s*w, d/s^2), e.g. for `tokenizer.decode_bits`."""
        return unpatchify_bits(self.bits_Bhwd, self.spatial_patch)


def filter_logits(logits_NV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Logits over the last dim with the excluded values set to -inf (a new tensor).

    top_k > 0 keeps the k largest (clamped to V, so 900 is a no-op over the 2 values of one bit). top_p > 0
    removes the least likely values whose cumulative probability is <= 1 - top_p, never the most likely one
    (for one bit: the less likely value goes when its probability is <= 1 - top_p).
    """
    out = logits_NV.clone()
    V = out.shape[-1]
    if top_k > 0:
        kth = out.topk(min(top_k, V), dim=-1).values.amin(dim=-1, keepdim=True)
        out.masked_fill_(out < kth, -torch.inf)
    if top_p > 0:
        sorted_NV, order_NV = out.sort(dim=-1, descending=False)
        remove_NV = sorted_NV.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove_NV[..., -1:] = False
        out.masked_fill_(remove_NV.scatter(-1, order_NV, remove_NV), -torch.inf)
    return out


def sample_bits(
    logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw every bit from its pair of logits (bit j: [..., 2j] scores 0, [..., 2j+1] scores 1) -> (B, l, d) uint8."""
    B, l, V = logits_BlV.shape
    probs_N2 = filter_logits(logits_BlV.float().reshape(-1, 2), top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs_N2, 1, generator=generator).view(B, l, V // 2).to(torch.uint8)


def sample_index_bits(
    logits_BlV: torch.Tensor, d: int, top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index-wise head (V = 2^d): draw one index per token, return its bits (B, l, d) uint8 and p(bit = 1)."""
    B, l, V = logits_BlV.shape
    logits_NV = logits_BlV.float().reshape(-1, V)
    index_N1 = torch.multinomial(filter_logits(logits_NV, top_k, top_p).softmax(dim=-1), 1, generator=generator)
    shifts_d = torch.arange(d, device=logits_BlV.device)
    table_Vd = ((torch.arange(V, device=logits_BlV.device)[:, None] >> shifts_d) & 1).float()
    probs_Bld = (logits_NV.softmax(dim=-1) @ table_Vd).view(B, l, d)  # marginal of each bit
    bits_Bld = ((index_N1 >> shifts_d) & 1).view(B, l, d).to(torch.uint8)
    return bits_Bld, probs_Bld


def _per_scale(name: str, value: float | Sequence[float], K: int) -> list[float]:
    values = [float(value)] * K if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != K:
        raise ValueError(f"{name} needs one value per scale ({K}), got {len(values)}")
    return values


def _pad_tokens(text_BTE: torch.Tensor, T: int) -> torch.Tensor:
    return torch.nn.functional.pad(text_BTE, (0, 0, 0, T - text_BTE.shape[1]))


def _check_text(name: str, text_BTE: torch.Tensor, lens_B: torch.Tensor, E: int) -> None:
    if text_BTE.ndim != 3 or text_BTE.shape[2] != E:
        raise ValueError(f"{name} must be (B, T, {E}), got {tuple(text_BTE.shape)}")
    if lens_B.shape != (text_BTE.shape[0],):
        raise ValueError(f"{name} lengths must be ({text_BTE.shape[0]},), got {tuple(lens_B.shape)}")


def _check_inputs(
    model: Infinity,
    tokenizer: BitwiseTokenizer,
    text_BTE: torch.Tensor,
    text_lens_B: torch.Tensor,
    schedule: Schedule,
    tau_K: list[float],
    top_k: int,
    top_p: float,
    prefix_bits: list[torch.Tensor],
    intervention: Intervention | None,
) -> None:
    K, d = schedule.num_scales, model.config.bits
    spatial_patch(d, tokenizer.bits)  # raises unless a token is an s x s patch of latent cells
    _check_text("text", text_BTE, text_lens_B, model.config.text_channels)
    if any(t <= 0 for t in tau_K):
        raise ValueError(f"tau must be > 0 at every scale, got {tau_K}")
    if top_k < 0 or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 <= top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if len(prefix_bits) > K:
        raise ValueError(f"prefix_bits holds {len(prefix_bits)} scales but the schedule has only {K}")
    B = text_BTE.shape[0]
    for k, bits in enumerate(prefix_bits):
        need = (B, *schedule.scales[k], d)
        if tuple(bits.shape) != need:
            raise ValueError(f"prefix_bits[{k}] must be (B, h, w, d) = {need}, got {tuple(bits.shape)}")
        if bits.numel() and int(bits.max()) > 1:
            raise ValueError(f"prefix_bits[{k}] must hold only 0 and 1")
    if intervention is not None:
        if not 0 <= intervention.scale_index < K:
            raise ValueError(f"intervention.scale_index must be in [0, {K}), got {intervention.scale_index}")
        if not 0.0 <= intervention.fraction <= 1.0:
            raise ValueError(f"intervention.fraction must be in [0, 1], got {intervention.fraction}")


@torch.no_grad()
def sample_scales(
    model: Infinity,
    tokenizer: BitwiseTokenizer,
    text_BTE: torch.Tensor,
    text_lens_B: torch.Tensor,
    schedule: Schedule,
    *,
    cfg: float = 3.0,
    cfg_schedule: Sequence[float] | None = None,
    tau: float | Sequence[float] = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
    negative_text_BTE: torch.Tensor | None = None,
    negative_lens_B: torch.Tensor | None = None,
    prefix_bits: Sequence[torch.Tensor] | None = None,
    intervention: Intervention | None = None,
    preview: bool = False,
    timer: StageTimer | None = None,
) -> Iterator[ScaleEvent]:
    """Sample the bits of every scale of `schedule`, yielding a `ScaleEvent` after each.

    text_BTE / text_lens_B: padded prompt features and lengths (see `Infinity.encode_text`).
    cfg: guidance weight of every scale, or `cfg_schedule` with one per scale; 1 disables guidance.
    tau: temperature (> 0), one value or one per scale; divides the logits of both CFG halves.
    top_k / top_p: per-bit filtering (0 disables each). generator: the only randomness of the bits.
    negative_text_BTE / negative_lens_B: replaces the learned unconditional text in the CFG half.
    prefix_bits: the bits (B, h_k, w_k, d) of the first scales, used instead of sampled ones. The bits are
        still drawn (and discarded) there, so the later scales see the same random stream as a run without it.
        They are per transformer token, as in the events (`patchify_bits` turns tokenizer bits into these).
    intervention: flip a fraction of one scale's bits before they enter F.
    preview: a quick decode of F_k at every scale (`decode_preview`); the last event always carries the image.
    timer: entered as `with timer(stage, scale_index):` around each stage of `STAGES` (for benchmarks).
    """
    K = schedule.num_scales
    cfg_K = _per_scale("cfg_schedule", cfg if cfg_schedule is None else cfg_schedule, K)
    tau_K = _per_scale("tau", tau, K)
    prefix_bits = list(prefix_bits or [])
    _check_inputs(model, tokenizer, text_BTE, text_lens_B, schedule, tau_K, top_k, top_p, prefix_bits, intervention)
    B, d, s = text_BTE.shape[0], model.config.bits, spatial_patch(model.config.bits, tokenizer.bits)
    full = latent_scales([schedule.latent_hw], s)[0]  # the tokenizer's grid: s times the last token grid
    dtype = model.pos_start.dtype
    stage = timer or untimed

    if negative_text_BTE is not None:
        if negative_lens_B is None:
            raise ValueError("negative_text_BTE needs negative_lens_B")
        _check_text("negative_text", negative_text_BTE, negative_lens_B, model.config.text_channels)
        if negative_text_BTE.shape[0] != B:
            raise ValueError(f"need {B} negative prompts (one per prompt), got {negative_text_BTE.shape[0]}")

    # 1. Text: guidance doubles the batch as [prompts; unconditional] once for all scales (as released).
    guided = any(c != 1 for c in cfg_K)
    with stage("conditioning", None):
        if guided and negative_text_BTE is not None:
            T = max(text_BTE.shape[1], negative_text_BTE.shape[1])
            text_BTE = torch.cat([_pad_tokens(text_BTE, T), _pad_tokens(negative_text_BTE, T)])
            lens_B = torch.cat([text_lens_B, negative_lens_B])
        elif guided:
            text_BTE = torch.cat([text_BTE, model.null_text(text_lens_B, text_BTE.shape[1])])
            lens_B = torch.cat([text_lens_B, text_lens_B])
        else:
            lens_B = text_lens_B
        text = model.encode_text(text_BTE.to(dtype), lens_B)
        cache = model.new_cache(text_BTE.shape[0], schedule)

    # 2. Scales, coarse to fine.
    F_BdHW = torch.zeros(B, tokenizer.bits, *full, device=text_BTE.device)
    x_Bld = None
    for k, (h, w) in enumerate(schedule.scales):
        with stage("transformer", k):
            raw_BlV = model.step(k, x_Bld, text, cache, schedule)
        with stage("sampling", k):
            raw_BlV = raw_BlV.float() / tau_K[k]
            if cfg_K[k] != 1:
                logits_BlV = cfg_K[k] * raw_BlV[:B] + (1 - cfg_K[k]) * raw_BlV[B:]
            else:
                logits_BlV = raw_BlV[:B]
            if model.config.head == "index":
                bits_Bld, probs_Bld = sample_index_bits(logits_BlV, d, top_k, top_p, generator)
                bits_Bhwd, probs_Bhwd = bits_Bld.view(B, h, w, d), probs_Bld.view(B, h, w, d)
            else:
                probs_Bhwd = logits_BlV.view(B, h, w, d, 2).softmax(dim=-1)[..., 1]
                bits_Bhwd = sample_bits(logits_BlV, top_k, top_p, generator).view(B, h, w, d)
            if k < len(prefix_bits):
                bits_Bhwd = prefix_bits[k].to(device=bits_Bhwd.device, dtype=torch.uint8)
            if intervention is not None and intervention.scale_index == k:
                bits_Bhwd = flip_fraction(bits_Bhwd, intervention.fraction, intervention.seed)
                logger.info("scale %d/%d: flipped %.1f%% of the bits", k + 1, K,
                            100 * intervention.fraction)

        with stage("update", k):
            # bilinear_resize is the identity at the full grid, so the last scale is added without interpolation.
            codes_Bdhw = tokenizer.bits_to_codes(unpatchify_bits(bits_Bhwd, s)).to(F_BdHW.device)
            F_BdHW = F_BdHW + bilinear_resize(codes_Bdhw, full)
            if k + 1 < K:
                x_Bld = tokenizer.next_scale_input(F_BdHW, schedule.scales[k + 1], s).to(dtype)
                x_Bld = x_Bld.repeat(text_BTE.shape[0] // B, 1, 1)  # the same image input for both CFG halves
        image = preview_B3HW = None
        if k + 1 == K:
            with stage("decode", k):
                image = tokenizer.decode(F_BdHW)
            preview_B3HW = image if preview else None
        elif preview:
            with stage("preview", k):
                preview_B3HW = decode_preview(tokenizer, F_BdHW, (s * h, s * w))
        yield ScaleEvent(
            k, K, bits_Bhwd, probs_Bhwd, logits_BlV, F_BdHW,
            preview_B3HW=preview_B3HW, image_B3HW=image, spatial_patch=s,
        )


def sample_image(*args, **kwargs) -> ScaleEvent:
    """Run `sample_scales` to the end and return the last event (its `image_B3HW` is the result)."""
    for event in sample_scales(*args, **kwargs):
        pass
    return event
