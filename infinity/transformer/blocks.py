"""The pieces of an Infinity block: cosine self-attention, text cross-attention, FFN, shared AdaLN.

Legend: B batch, L tokens in the attended sequence (all scales so far), l tokens of the current call,
T text tokens (padded), C width, E text-encoder channels, N heads, c head dimension.

Text is carried padded: text_BTC (projected to the width; raw features are text_BTE) plus text_mask_BT (True = a real token). Prompts have at least one token.

Every attention goes through `attention`, which runs torch's scaled_dot_product_attention (SDPA) or, on CUDA,
xformers' or flash-attn's kernel: automatically when one is installed, or as chosen with
`set_attention_backend(name)` / the environment variable INFINITY_ATTENTION (auto, sdpa, xformers, flash).
Under "auto", a library that imports but fails its first call (a wheel built for another torch or CUDA imports
with a warning and fails when called) is dropped with one logged warning, and SDPA runs instead.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TransformerConfig
from .kv_cache import KVCache
from .rope import apply_rope

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------------------
# Attention kernels

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "flash")
ATTENTION_ENV = "INFINITY_ATTENTION"
_LIBRARIES = {"xformers": "xformers", "flash": "flash_attn"}
_HALF = (torch.float16, torch.bfloat16)
_chosen_backend: str | None = None  # set by set_attention_backend; None defers to $INFINITY_ATTENTION
_proven: set[str] = set()  # library kernels that have run in this process
_broken: set[str] = set()  # library kernels that failed their first call under "auto": SDPA runs instead


@functools.cache
def _kernel(name: str) -> Callable | None:
    """The library's attention function, or None when the library cannot be imported."""
    try:
        if name == "xformers":
            from xformers.ops import memory_efficient_attention

            return memory_efficient_attention
        from flash_attn import flash_attn_func

        return flash_attn_func
    except (ImportError, OSError):  # not installed, or built for another torch / CUDA
        return None


def _checked(name: str, source: str) -> str:
    if name not in ATTENTION_BACKENDS:
        choices = ", ".join(ATTENTION_BACKENDS)
        raise ValueError(f"unknown attention backend {name!r} ({source}); choose one of {choices}")
    if name in _LIBRARIES and _kernel(name) is None:
        raise RuntimeError(
            f"attention backend {name!r} ({source}) is not available: `import {_LIBRARIES[name]}` fails; "
            f"install it, or choose 'sdpa' or 'auto'"
        )
    return name


def set_attention_backend(name: str | None) -> None:
    """Choose the attention kernel of every block: "auto" (the default), "sdpa", "xformers" or "flash".

    None forgets the choice (then $INFINITY_ATTENTION decides, else "auto"). A library that cannot be imported
    raises here. "auto" uses flash-attn for fp16/bf16 CUDA tensors, else xformers on CUDA, else SDPA.
    """
    global _chosen_backend
    _chosen_backend = None if name is None else _checked(name, "set_attention_backend")


def attention_backend() -> str:
    """The backend in force: set_attention_backend's choice, else $INFINITY_ATTENTION, else "auto"."""
    if _chosen_backend is not None:
        return _chosen_backend
    name = os.environ.get(ATTENTION_ENV)
    return "auto" if not name else _checked(name, f"${ATTENTION_ENV}")


def _kernel_for(q_BNlc: torch.Tensor, mask: torch.Tensor | None) -> str:
    name = attention_backend()
    # Neither library's public kernel takes an arbitrary boolean mask, so the block-causal mask of training and
    # the padded-text masks of cross-attention and the SOS pool always run on SDPA (which has its own
    # memory-efficient CUDA kernel for masks). The KV-cached self-attention of sampling has no mask.
    if name == "sdpa" or mask is not None:
        return "sdpa"
    if name == "auto":
        if not q_BNlc.is_cuda:
            return "sdpa"
        if q_BNlc.dtype in _HALF and "flash" not in _broken and _kernel("flash") is not None:
            return "flash"
        return "xformers" if "xformers" not in _broken and _kernel("xformers") is not None else "sdpa"
    if not q_BNlc.is_cuda:
        raise RuntimeError(f"attention backend {name!r} runs on CUDA only, got tensors on {q_BNlc.device}")
    return name


def attention(
    q_BNlc: torch.Tensor,
    k_BNLc: torch.Tensor,
    v_BNLc: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v over the keys allowed by `mask`, heads concatenated: (B, l, N*c).

    mask: bool, True where a query may attend to a key, broadcastable to (B, N, l, L). scale: None is 1/sqrt(c).
    """
    B, N, l, c = q_BNlc.shape
    kernel = _kernel_for(q_BNlc, mask)
    if kernel != "sdpa":
        try:
            out_BlNc = _library_attention(kernel, q_BNlc, k_BNLc, v_BNLc, scale)
        except Exception as err:  # whatever a broken build raises (RuntimeError, OSError, TypeError, ...)
            if kernel in _proven or attention_backend() != "auto":
                raise
            _broken.add(kernel)
            logger.warning("attention backend %r failed its first call (%s: %s); using SDPA instead",
                           kernel, type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "")
        else:
            _proven.add(kernel)
            return out_BlNc.reshape(B, l, N * c)
    out_BNlc = F.scaled_dot_product_attention(q_BNlc, k_BNLc, v_BNLc, attn_mask=mask, scale=scale)
    return out_BNlc.transpose(1, 2).reshape(B, l, N * c)


def _library_attention(
    kernel: str, q_BNlc: torch.Tensor, k_BNLc: torch.Tensor, v_BNLc: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """xformers' or flash-attn's kernel: (B, l, N, c)."""
    # Both libraries take and return (B, L, N, c) (head dim contiguous, which the transposes keep).
    q_BlNc, k_BLNc, v_BLNc = (t.transpose(1, 2) for t in (q_BNlc, k_BNLc, v_BNLc))
    if kernel == "xformers":
        return _kernel("xformers")(q_BlNc, k_BLNc, v_BLNc, scale=scale)
    # flash-attn computes in fp16/bf16 only; like the official cross-attention, fp32 inputs run in bf16.
    dtype = q_BlNc.dtype
    if dtype not in _HALF:
        q_BlNc, k_BLNc, v_BLNc = (t.to(torch.bfloat16) for t in (q_BlNc, k_BLNc, v_BLNc))
    return _kernel("flash")(q_BlNc, k_BLNc, v_BLNc, softmax_scale=scale).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Pieces of a block


def ada_layer_norm(x_BLC: torch.Tensor, scale_B1C: torch.Tensor, shift_B1C: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine weights, modulated by the condition: LN(x) * (1 + scale) + shift."""
    return F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=NORM_EPS).mul(scale_B1C + 1).add(shift_B1C)


def text_keys_values(
    text_BTE: torch.Tensor, mat_kv: nn.Linear, v_bias: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head keys and values (B, N, T, c) of text tokens; keys have no bias, values `v_bias`."""
    B, T, _ = text_BTE.shape
    kv_bias = torch.cat([torch.zeros_like(v_bias), v_bias])
    kv_BT2Nc = (mat_kv(text_BTE) + kv_bias).view(B, T, 2, num_heads, -1)  # a module call: int8 mat_kv runs too
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
        B, l, _ = x_BlC.shape
        # Called as a module (not F.linear on its weight) so that a quantized mat_qkv (precision.py) runs too.
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = (self.mat_qkv(x_BlC) + bias).view(B, l, 3, self.num_heads, -1)
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
        return self.proj(attention(q_BNlc, k_BNLc, v_BNLc, attn_mask_lL, scale=1.0))


class CrossAttention(nn.Module):
    """Attention from image tokens to the (projected) text tokens of their own prompt; with a KV cache (sampling)
    the text's keys/values are projected at the first scale only."""

    def __init__(self, width: int, num_heads: int, layer_index: int = 0):
        super().__init__()
        self.num_heads, self.layer_index = num_heads, layer_index
        self.mat_q = nn.Linear(width, width)
        self.mat_kv = nn.Linear(width, 2 * width, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(width))  # v has a bias, k none
        self.proj = nn.Linear(width, width)

    def forward(
        self, x_BlC: torch.Tensor, text_BTC: torch.Tensor, text_mask_BT: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        B, l, _ = x_BlC.shape
        q_BNlc = self.mat_q(x_BlC).view(B, l, self.num_heads, -1).transpose(1, 2)
        project = functools.partial(text_keys_values, text_BTC, self.mat_kv, self.v_bias, self.num_heads)
        k_BNTc, v_BNTc = project() if cache is None else cache.text_keys_values(self.layer_index, project)
        return self.proj(attention(q_BNlc, k_BNTc, v_BNTc, text_mask_BT[:, None, None, :]))


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
        out_B1C = attention(q_BN1c, k_BNTc, v_BNTc, text_mask_BT[:, None, None, :])
        return self.proj(out_B1C.squeeze(1))  # (B, C)


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
        self.ca = CrossAttention(C, config.num_heads, layer_index)
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
        x_BlC = x_BlC + self.ca(self.ca_norm(x_BlC), *text, cache)
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
