"""Infinity: bitwise visual autoregressive transformer over scales (arXiv 2412.04431).

Legend: B batch, L tokens of all scales (the 1x1 first scale is the SOS), l tokens of one scale,
C width (= D, the width of the condition cond_BD), d bits per token, V = 2d logits per token,
K scales, h/w one scale's grid, T text tokens (padded), E text-encoder channels.

Text arrives padded: text_BTE (B, T, E) with text_lens_B (B,) valid tokens per prompt (a prefix of each
row; padding rows should be finite, e.g. zeros). The image arrives as the teacher-forcing inputs x_BLd of
scales 1..K-1 (scale 0's input is the SOS), each scale's d-dim input being the running sum of the codes of
the earlier scales resized to its grid (the tokenizer's `teacher_forcing_inputs`).

Two entry points:
  * `forward`: the training pass, all scales at once under a block-causal mask (teacher forcing).
  * `encode_text` once, then `step` scale by scale with a `KVCache` (sampling; the sampler owns the loop,
    classifier-free guidance and the bits -> next input).
Both give the same logits for the same inputs (tests/test_transformer.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..schedules import Schedule, largest_grid
from .blocks import NORM_EPS, AdaLNBeforeHead, Block, TextAttentionPool, block_causal_mask
from .config import TransformerConfig
from .kv_cache import KVCache
from .rope import rope_angles


@dataclass(frozen=True)
class TextConditioning:
    """What every scale needs from the prompts; computed once per batch by `Infinity.encode_text`."""

    cond_BD: torch.Tensor  # pooled text: the SOS token (plus pos_start) and the AdaLN condition
    text_BTC: torch.Tensor  # text projected to the width, keys/values of cross-attention
    text_mask_BT: torch.Tensor  # True on the real tokens of each prompt


class Infinity(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        C, E = config.width, config.text_channels

        # 1. Text: a learned "empty prompt" for classifier-free guidance, RMSNorm, the pooled condition
        #    (SOS / AdaLN) and the cross-attention features.
        self.cfg_uncond = nn.Parameter(torch.empty(config.text_maxlen, E))
        self.text_norm = nn.RMSNorm(E, eps=NORM_EPS)
        self.text_pool = TextAttentionPool(E, C, config.text_pool_heads)
        self.text_proj = nn.Sequential(nn.Linear(E, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))

        # 2. Image tokens: the SOS offset, a learned embedding of the scale index, the bits' embedding.
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.lvl_embed = nn.Embedding(config.max_scales, C)
        self.word_embed = nn.Linear(config.bits, C)

        # 3. Blocks, all modulated by one shared AdaLN projection of cond_BD.
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))

        # 4. Head: the paper's Infinite-Vocabulary Classifier, d binary classifiers (2 logits per bit) instead of
        #    one softmax over 2^d indices. Built without drawing random numbers (`init_weights` fills it last), so
        #    the same seed gives the same trunk whatever the head: a bits-vs-index comparison starts paired.
        self.head_norm = AdaLNBeforeHead(C)
        self.head = nn.utils.skip_init(nn.Linear, C, config.vocab, device=torch.get_default_device())

        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation for training from scratch (the official recipe: small heads, near-identity blocks).

        The head (`self.head`) is drawn last, after every other tensor: its size (2d or 2^d logits) then changes
        nothing else the same seed draws."""
        C, depth = self.config.width, self.config.depth
        small_std = math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.head:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cfg_uncond, std=1.2)
        self.cfg_uncond.div_(self.config.text_channels**0.5)
        nn.init.trunc_normal_(self.text_pool.mat_q, std=small_std)
        nn.init.zeros_(self.text_pool.v_bias)
        nn.init.trunc_normal_(self.pos_start, std=small_std)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=small_std)
        self.head_norm.ada_lin[-1].weight.mul_(1e-3)
        for block in self.blocks:
            for proj in (block.sa.proj, block.ca.proj, block.ffn.fc2):
                proj.weight.mul_(1 / math.sqrt(2 * depth))  # residual branches sum over 2*depth sublayers
            nn.init.normal_(block.ada_gss, std=C**-0.5)
            block.ada_gss[:, :, :2].mul_(5e-6)  # gates start near zero: every block starts near the identity
            block.ada_gss[:, :, 2:].mul_(1e-3)
            nn.init.constant_(block.sa.scale_mul_1H11, math.log(4.0))
            for bias in (block.sa.q_bias, block.sa.v_bias, block.ca.v_bias):
                nn.init.zeros_(bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        self.head.weight.mul_(0.02)
        nn.init.zeros_(self.head.bias)

    # ---- text ----

    def null_text(self, text_lens_B: torch.Tensor, max_len: int) -> torch.Tensor:
        """The learned unconditional text, as padded features (B, max_len, E): row i uses cfg_uncond[:len_i]."""
        if max_len > self.config.text_maxlen:
            raise ValueError(f"prompts of {max_len} tokens exceed text_maxlen={self.config.text_maxlen}")
        return self.cfg_uncond[:max_len].expand(len(text_lens_B), -1, -1)

    def encode_text(
        self, text_BTE: torch.Tensor, text_lens_B: torch.Tensor, drop_text_B: torch.Tensor | None = None
    ) -> TextConditioning:
        """Normalise the text once and derive cond_BD and the cross-attention features.

        drop_text_B (bool, optional): prompts replaced by the unconditional text (classifier-free guidance
        training drops ~10% of prompts; the caller draws which).
        """
        B, T, _ = text_BTE.shape
        if text_lens_B.shape != (B,) or int(text_lens_B.min()) < 1 or int(text_lens_B.max()) > T:
            raise ValueError(f"text_lens must hold {B} lengths in [1, {T}], got {text_lens_B.tolist()}")
        text_mask_BT = torch.arange(T, device=text_BTE.device)[None, :] < text_lens_B.to(text_BTE.device)[:, None]
        if drop_text_B is not None:
            text_BTE = torch.where(drop_text_B[:, None, None], self.null_text(text_lens_B, T), text_BTE)
        text_BTE = self.text_norm(text_BTE)
        cond_BD = self.text_pool(text_BTE, text_mask_BT)
        return TextConditioning(cond_BD, self.text_proj(text_BTE), text_mask_BT)

    # ---- shared pieces of forward and step ----

    def shared_adaln(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Shared AdaLN output (B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2 (before ada_gss)."""
        return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.config.width)

    def _rope(
        self, scales: Sequence[tuple[int, int]], schedule: Schedule, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE angles of `scales`, positions stretched onto the largest grid of the schedule's aspect ratio."""
        return rope_angles(scales, largest_grid(schedule.h_div_w), self.config.head_dim, device)

    def _check_schedule(self, schedule: Schedule) -> None:
        if schedule.num_scales > self.config.max_scales:
            raise ValueError(f"{schedule.num_scales} scales exceed max_scales={self.config.max_scales}")

    def logits(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Head: (B, L, C) hidden states -> (B, L, 2d) logits; bit j scores 0 at 2j and 1 at 2j+1."""
        return self.head(self.head_norm(x_BLC, cond_BD))

    # ---- training ----

    def forward(
        self,
        text_BTE: torch.Tensor,
        text_lens_B: torch.Tensor,
        x_BLd: torch.Tensor,
        schedule: Schedule,
        drop_text_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, 2d) of every scale; x_BLd (B, L-1, d) are the inputs of scales 1..K-1."""
        self._check_schedule(schedule)
        B, L = x_BLd.shape[0], schedule.seq_len
        if x_BLd.shape != (B, L - 1, self.config.bits):
            raise ValueError(
                f"x_BLd must be (B, {L - 1}, {self.config.bits}) for this schedule,"
                f" got {tuple(x_BLd.shape)}"
            )
        text = self.encode_text(text_BTE, text_lens_B, drop_text_B)
        sos_B1C = text.cond_BD[:, None, :] + self.pos_start
        x_BLC = torch.cat([sos_B1C, self.word_embed(x_BLd)], dim=1)
        scale_L = torch.cat([torch.full((h * w,), k, device=x_BLC.device) for k, (h, w) in enumerate(schedule.scales)])
        x_BLC = x_BLC + self.lvl_embed(scale_L)  # once, before the first block (as released)

        gss_B16C = self.shared_adaln(text.cond_BD)
        rope = self._rope(schedule.scales, schedule, x_BLC.device)
        mask_LL = block_causal_mask(schedule.scales, x_BLC.device)
        for block in self.blocks:
            x_BLC = block(x_BLC, gss_B16C, (text.text_BTC, text.text_mask_BT), rope, mask_LL)
        return self.logits(x_BLC, text.cond_BD)

    # ---- sampling ----

    def new_cache(self, batch_size: int, schedule: Schedule) -> KVCache:
        """An empty KV cache for one sampling run of `schedule` (batch_size rows, CFG rows included), in the dtype
        of the blocks that fill it (bf16 blocks under autocast with an fp32 residual stream: a bf16 cache)."""
        p = self.blocks[0].ada_gss
        c = self.config
        return KVCache(c.depth, batch_size, c.num_heads, schedule.seq_len, c.head_dim, device=p.device, dtype=p.dtype)

    def step(
        self,
        scale_index: int,
        x_Bld: torch.Tensor | None,
        text: TextConditioning,
        cache: KVCache,
        schedule: Schedule,
    ) -> torch.Tensor:
        """Logits (B, h*w, 2d) of scale `scale_index` given all earlier scales (in `cache`, extended here).

        x_Bld: the scale's input (B, h*w, d); None for scale 0, whose only token is the SOS.
        Scales must be run in order 0, 1, ..., one call each, on a cache from `new_cache`.
        """
        self._check_schedule(schedule)
        h, w = schedule.scales[scale_index]
        start = sum(hh * ww for hh, ww in schedule.scales[:scale_index])
        if cache.length != start:
            raise ValueError(f"scale {scale_index} starts at token {start} but the cache holds {cache.length}")
        if scale_index == 0:
            if x_Bld is not None:
                raise ValueError("scale 0 is the SOS token: pass x_Bld=None")
            x_BlC = text.cond_BD[:, None, :] + self.pos_start
        else:
            if x_Bld is None or x_Bld.shape[1:] != (h * w, self.config.bits):
                got = None if x_Bld is None else tuple(x_Bld.shape)
                need = f"(B, {h * w}, {self.config.bits})"
                raise ValueError(f"scale {scale_index} needs x_Bld of shape {need}, got {got}")
            x_BlC = self.word_embed(x_Bld)
        x_BlC = x_BlC + self.lvl_embed.weight[scale_index]

        gss_B16C = self.shared_adaln(text.cond_BD)
        rope = self._rope([(h, w)], schedule, x_BlC.device)
        for block in self.blocks:
            x_BlC = block(x_BlC, gss_B16C, (text.text_BTC, text.text_mask_BT), rope, None, cache)
        cache.advance(h * w)
        return self.logits(x_BlC, text.cond_BD)
