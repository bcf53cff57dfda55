"""2-D rotary position embedding over the token grids of next-scale prediction (the paper's "dynamic aspect
ratios and position encoding": RoPE2d with positions normalised per scale).

Legend: l tokens of one scale, L tokens of all scales, h/w one scale's grid, H/W the reference grid,
c head dimension, p = c/2 rotated pairs, B batch, N heads.

Every scale is a coarse view of the same image, so its grid positions are stretched onto one reference
grid: cell (i, j) of an h x w scale sits at (round(i*H/h), round(j*W/w)), where (H, W) is the last grid of
the 1M-pixel schedule of the aspect ratio (64x64 for 1:1), whatever budget is being run. Positions restart
at every scale. Head dimensions rotate in adjacent pairs (2i, 2i+1); the first half of the pairs rotate
with the row position, the second half with the column position.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

ROPE_BASE = 10000.0


def grid_positions(
    h: int, w: int, ref_hw: tuple[int, int], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column position of each of the h*w cells (row-major), stretched onto ref_hw."""
    H, W = ref_hw
    # float32 products then round-half-to-even: exactly how the official positions come out (e.g. 22.5 -> 22).
    rows = (torch.arange(h, device=device) * (H / h)).round()
    cols = (torch.arange(w, device=device) * (W / w)).round()
    return rows.repeat_interleave(w), cols.repeat(h)


def rope_angles(
    scales: Sequence[tuple[int, int]], ref_hw: tuple[int, int], head_dim: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles of every token of `scales` (concatenated), each (L, head_dim/2)."""
    half = head_dim // 2
    inv_freq_q = 1.0 / ROPE_BASE ** (torch.arange(0, half, 2, device=device).float() / half)  # (c/4,)
    angles = []
    for h, w in scales:
        rows_l, cols_l = grid_positions(h, w, ref_hw, device)
        angles.append(torch.cat([torch.outer(rows_l, inv_freq_q), torch.outer(cols_l, inv_freq_q)], dim=1))  # (l, p)
    angle_Lp = torch.cat(angles)
    return angle_Lp.cos(), angle_Lp.sin()


def apply_rope(x_BNLc: torch.Tensor, cos_Lp: torch.Tensor, sin_Lp: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of every head by the angle of its token (in float32)."""
    x0, x1 = x_BNLc.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, N, L, p) each
    out = torch.stack([cos_Lp * x0 - sin_Lp * x1, sin_Lp * x0 + cos_Lp * x1], dim=-1)  # (B, N, L, p, 2)
    return out.flatten(-2).to(x_BNLc.dtype)
