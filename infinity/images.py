"""Conversions between image files / PIL images and the model's tensors, and PSNR.

Model images are float tensors (B, 3, H, W), RGB, in [-1, 1].
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def open_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image, or ValueError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def fit(img: Image.Image, hw: tuple[int, int]) -> Image.Image:
    """Resize (Lanczos) so the image covers `hw` = (H, W), then center-crop to exactly that size."""
    H, W = hw
    w, h = img.size
    scale = max(W / w, H / h)
    rw, rh = max(W, round(w * scale)), max(H, round(h * scale))
    img = img.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - W) // 2, (rh - H) // 2
    return img.crop((left, top, left + W, top + H))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x * 2 - 1).unsqueeze(0)


def to_pil(x_3HW: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [-1, 1] -> PIL RGB (rounded to the nearest 8-bit value)."""
    x = ((x_3HW.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def psnr(a_B3HW: torch.Tensor, b_B3HW: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), one value per image: of 8-bit
    images through `to_tensor`, the 8-bit PSNR. The MSE is floored at 1e-12, so identical images give 126.02 dB,
    not infinity. The project's only PSNR: PIL and uint8 images are converted with `to_tensor` first."""
    mse = (a_B3HW.float() - b_B3HW.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
