"""The one PSNR and the one image conversion every part of the project uses."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from infinity.images import psnr, to_pil, to_tensor


def test_psnr_of_8_bit_images_and_its_one_cap():
    a = Image.new("RGB", (8, 8), (10, 20, 30))
    b = Image.new("RGB", (8, 8), (20, 20, 30))  # one channel off by 10: MSE 100 / 3 on the 8-bit scale
    assert float(psnr(to_tensor(a), to_tensor(b))[0]) == pytest.approx(10 * math.log10(255**2 / (100 / 3)), rel=1e-5)
    assert float(psnr(to_tensor(a), to_tensor(a))[0]) == pytest.approx(10 * math.log10(4 / 1e-12))  # identical


def test_to_pil_inverts_to_tensor():
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    x_13HW = to_tensor(Image.fromarray(pixels))
    assert x_13HW.shape == (1, 3, 6, 5) and x_13HW.min() >= -1 and x_13HW.max() <= 1
    assert np.array_equal(np.asarray(to_pil(x_13HW[0])), pixels)
    assert np.asarray(to_pil(torch.full((3, 2, 2), 5.0))).min() == 255  # clamped
