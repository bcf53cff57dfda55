"""Floating-point operations of one image, counted by running the pipeline's own code on the meta device.

`torch.utils.flop_counter.FlopCounterMode` counts matmuls, convolutions and attention as the kernels are called;
on the meta device nothing is computed, so counting a 2B-parameter model costs milliseconds and no memory.
(Counting on the CPU would miss attention: its fused CPU kernel has no registered formula; on meta it falls back
to the matmuls that are counted.) Elementwise work (norms, activations, softmax, sampling) is not counted: these
are the FLOPs of the matmuls and convolutions, the work a GPU's or CPU's peak figure is quoted for.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checkpoints import empty_model
from ..pipeline import InfinityPipeline
from ..sampling import preview_grid
from ..schedules import Schedule
from ..text import TextEncoder
from ..tokenizer import BitwiseTokenizer
from ..tokenizer.model import latent_scales
from ..transformer import Infinity

META = torch.device("meta")


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs (multiply-add = 2) of one image, by stage; `preview_decode` only counts when previews are on."""

    text_encoding: int
    transformer: int  # every scale's step (both CFG halves) and the text conditioning
    vae_decode: int
    preview_decode: int

    def total(self, previews: bool) -> int:
        return self.text_encoding + self.transformer + self.vae_decode + (self.preview_decode if previews else 0)


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def prompt_tokens(encoder: TextEncoder, prompt: str) -> tuple[int, int]:
    """(tokens the encoder runs over, valid tokens) for `prompt`: the encoder's own tokenizer call."""
    tokens = encoder.tokenizer(
        [prompt], max_length=encoder.max_length, truncation=True, return_tensors="pt",
        padding="max_length" if encoder.pad_to_max_length else "longest",
    )
    return tokens["input_ids"].shape[1], int(tokens["attention_mask"].sum())


def text_encoder_flops(encoder: TextEncoder, num_tokens: int) -> int:
    """One prompt of `num_tokens` tokens through a meta-device copy of the encoder's network."""
    with META:
        model = type(encoder.model)(encoder.model.config)
    return _count(lambda: model(input_ids=torch.zeros(1, num_tokens, dtype=torch.long, device=META)))


def transformer_flops(model: Infinity, schedule: Schedule, text_tokens: int, guided: bool) -> int:
    """Text conditioning plus every scale's `step` for one prompt (two rows with guidance), on a meta copy."""
    meta = empty_model(Infinity, model.config)
    B, c = 2 if guided else 1, model.config

    def run() -> None:
        text_BTE = torch.empty(B, text_tokens, c.text_channels, device=META)
        text = meta.encode_text(text_BTE, torch.full((B,), text_tokens))
        cache = meta.new_cache(B, schedule)
        for k, (h, w) in enumerate(schedule.scales):
            x_Bld = None if k == 0 else torch.empty(B, h * w, c.bits, device=META)
            meta.step(k, x_Bld, text, cache, schedule)

    return _count(run)


def decode_flops(tokenizer: BitwiseTokenizer, hw: tuple[int, int]) -> int:
    meta = empty_model(BitwiseTokenizer, tokenizer.config)
    return _count(lambda: meta.decode(torch.empty(1, tokenizer.bits, *hw, device=META)))


def image_flops(pipe: InfinityPipeline, schedule: Schedule, prompt: str, guided: bool) -> ImageFlops:
    """FLOPs of one image of `schedule` for `prompt`, as `pipe.stream` computes it."""
    run_tokens, valid_tokens = prompt_tokens(pipe.text_encoder, prompt)
    grids = latent_scales(schedule.scales, pipe.spatial_patch)
    full = grids[-1]
    return ImageFlops(
        text_encoding=text_encoder_flops(pipe.text_encoder, run_tokens),
        transformer=transformer_flops(pipe.transformer, schedule, valid_tokens, guided),
        vae_decode=decode_flops(pipe.tokenizer, full),
        preview_decode=sum(decode_flops(pipe.tokenizer, preview_grid(hw, full)) for hw in grids[:-1]),
    )
