"""The pieces of an Infinity block: cosine self-attention, text cross-attention, FFN, shared AdaLN.

Legend: B batch, L tokens in the attended sequence (all scales so far), l tokens of the current call,
T text tokens (padded), C width, E text-encoder channels, N heads, c head dimension.

Text is carried padded: text_BTC (projected to the width; raw features are text_BTE) plus text_mask_BT (True = a real token). Prompts have at least one token.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TransformerConfig
from .kv_cache import KVCache
from .rope import apply_rope

NORM_EPS = 1e-6
# Cosine attention's learned per-head logit scale starts at 4 and is capped at 100 (Swin-v2 style).
SCALE_MUL_INIT = 4.0
SCALE_MUL_MAX = 100.0


def block_causal_mask(scales: Sequence[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """(L, L) bool, True where query token i may attend to key token j: j's scale is not after i's.

    Next-scale prediction (VAR/Infinity) predicts all tokens of a scale at once from every earlier scale,
    so attention is causal between scales and full within one.
    """
    scale_L = torch.cat([torch.full((h * w,), k, device=device) for k, (h, w) in enumerate(scales)])
    return scale_L[:, None] >= scale_L[None, :]


def ada_layer_norm(x_BLC: torch.Tensor, scale_B1C: torch.Tensor, shift_B1C: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine weights, modulated by the condition: LN(x) * (1 + scale) + shift."""
    return F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=NORM_EPS).mul(scale_B1C + 1).add(shift_B1C)


def text_keys_values(
    text_BTE: torch.Tensor, mat_kv: nn.Linear, v_bias: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys and values (B, N, T, c) of text tokens; keys have no bias, values `v_bias`."""
    B, T, _ = text_BTE.shape
    kv_bias = torch.cat([torch.zeros_like(v_bias), v_bias])
    kv_BT2Nc = F.linear(text_BTE, mat_kv.weight, kv_bias).view(B, T, 2, num_heads, -1)
    k_BNTc, v_BNTc = kv_BT2Nc.permute(2, 0, 3, 1, 4).unbind(0)
    return k_BNTc, v_BNTc


class DropPath(nn.Module):
    """Stochastic depth: in training, drop the whole residual branch of a sample with probability `rate`."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x_BLC
        keep = 1.0 - self.rate
        keep_B11 = x_BLC.new_empty(x_BLC.shape[0], 1, 1).bernoulli_(keep)
        return x_BLC * keep_B11 / keep


class SelfAttention(nn.Module):
    """Cosine self-attention with 2-D RoPE; optionally reads and extends a KV cache (sampling)."""

    def __init__(self, config: TransformerConfig, layer_index: int):
        super().__init__()
        C, N = config.width, config.num_heads
        self.num_heads, self.layer_index = N, layer_index
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        # q and v have biases, k none (as released).
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        # (1, N, 1, 1), stored as a log; the official name writes heads as H.
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, N, 1, 1), math.log(SCALE_MUL_INIT)))
        self.proj = nn.Linear(C, C)

    def forward(
        self,
        x_BlC: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask_lL: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, l, C = x_BlC.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x_BlC, self.mat_qkv.weight, bias).view(B, l, 3, self.num_heads, -1)
        q_BNlc, k_BNlc, v_BNlc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Cosine attention: unit q and k, logits = learned per-head scale * cos(q, k); softmax scale 1.
        scale_mul = self.scale_mul_1H11.clamp_max(math.log(SCALE_MUL_MAX)).exp()
        q_BNlc = F.normalize(q_BNlc, dim=-1).mul(scale_mul)
        k_BNlc = F.normalize(k_BNlc, dim=-1)
        q_BNlc, k_BNlc = apply_rope(q_BNlc, *rope), apply_rope(k_BNlc, *rope)
        if cache is not None:  # keys of earlier scales + this one; all of them are visible
            k_BNLc, v_BNLc = cache.extend(self.layer_index, k_BNlc, v_BNlc)
        else:
            k_BNLc, v_BNLc = k_BNlc, v_BNlc
        out_BNlc = F.scaled_dot_product_attention(q_BNlc, k_BNLc, v_BNLc, attn_mask=attn_mask_lL, scale=1.0)
        return self.proj(out_BNlc.transpose(1, 2).reshape(B, l, C))


class CrossAttention(nn.Module):
    """Attention from image tokens to the (projected) text tokens of their own prompt."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))  # v has a bias, k none
        self.proj = nn.Linear(width, width)

    def forward(self, x_BlC: torch.Tensor, text_BTC: torch.Tensor, text_mask_BT: torch.Tensor) -> torch.Tensor:
        B, l, C = x_BlC.shape
        q_BNlc = self.mat_q(x_BlC).view(B, l, self.num_heads, -1).transpose(1, 2)
        k_BNTc, v_BNTc = text_keys_values(text_BTC, self.mat_kv, self.v_bias, self.num_heads)
        out_BNlc = F.scaled_dot_product_attention(q_BNlc, k_BNTc, v_BNTc, attn_mask=text_mask_BT[:, None, None, :])
        return self.proj(out_BNlc.transpose(1, 2).reshape(B, l, C))


class TextAttentionPool(nn.Module):
    """Pools a prompt's normalised text features into one vector, cond_BD (the SOS and the AdaLN condition).

    One learned query per head attends over the prompt's tokens (K without bias, V with bias, softmax
    scale 1/sqrt(head dim)); the heads' outputs are concatenated and projected.
    """

    def __init__(self, text_channels: int, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.mat_q = nn.Parameter(torch.zeros(1, num_heads, width // num_heads))
        self.mat_kv = nn.Linear(text_channels, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, text_BTE: torch.Tensor, text_mask_BT: torch.Tensor) -> torch.Tensor:
        k_BNTc, v_BNTc = text_keys_values(text_BTE, self.mat_kv, self.v_bias, self.num_heads)
        q_BN1c = self.mat_q.unsqueeze(2).expand(text_BTE.shape[0], -1, -1, -1)
        out_BN1c = F.scaled_dot_product_attention(q_BN1c, k_BNTc, v_BNTc, attn_mask=text_mask_BT[:, None, None, :])
        return self.proj(out_BN1c.flatten(1))  # (B, C)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x_BlC: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_BlC), approximate="tanh"))


class Block(nn.Module):
    """Self-attention, cross-attention to the text, FFN; the first and last are AdaLN-modulated and gated.

    The modulation comes from one shared projection of cond_BD (`gss`, computed once per forward by the
    model) plus this block's own learned offset `ada_gss`.
    """

    def __init__(self, config: TransformerConfig, layer_index: int):
        super().__init__()
        C = config.width
        self.sa = SelfAttention(config, layer_index)
        self.ca = CrossAttention(C, config.num_heads)
        self.ffn = FFN(C, config.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=NORM_EPS)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, C))
        rate = config.drop_path_rate * layer_index / max(config.depth - 1, 1)
        self.drop_path = DropPath(rate)

    def forward(
        self,
        x_BlC: torch.Tensor,
        gss_B16C: torch.Tensor,
        text: tuple[torch.Tensor, torch.Tensor],
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask_lL: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss_B16C).unbind(2)  # (B, 1, C) each
        sa_BlC = self.sa(ada_layer_norm(x_BlC, scale1, shift1), rope, attn_mask_lL, cache)
        x_BlC = x_BlC + self.drop_path(sa_BlC * gamma1)
        x_BlC = x_BlC + self.ca(self.ca_norm(x_BlC), *text)
        x_BlC = x_BlC + self.drop_path(self.ffn(ada_layer_norm(x_BlC, scale2, shift2)) * gamma2)
        return x_BlC


class AdaLNBeforeHead(nn.Module):
    """The head's own AdaLN, driven directly by cond_BD (not by the shared block modulation)."""

    def __init__(self, width: int):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale_B1C, shift_B1C = self.ada_lin(cond_BD).view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
        return ada_layer_norm(x_BLC, scale_B1C, shift_B1C)
