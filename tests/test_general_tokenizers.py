"""The shipped general tokenizers (assets/tokenizers): load offline, encode deterministically, beat the shapes
tokenizer on a picture outside the shapes data."""
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import load_model
from infinity.images import fit, open_image, psnr, to_tensor
from infinity.tokenizer import BitwiseTokenizer
from infinity.schedules import shapes_schedules

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = shapes_schedules()["1:1"]
# a beige background and soft colours: outside the three flat backgrounds the shapes tokenizer was trained on
PICTURE = ROOT / "assets" / "examples" / "shapes.png"


def _final_psnr(tok: BitwiseTokenizer, x: torch.Tensor) -> float:
    with torch.no_grad():
        codes = tok.encode_scales(x, SCHEDULE.scales)
        return float(psnr(tok.decode(codes.cumulative[-1]).clamp(-1, 1), x))


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_general_tokenizer_loads_offline_and_encodes_deterministically(bits):
    path = ROOT / "assets" / "tokenizers" / f"general-d{bits}.safetensors"
    assert path.stat().st_size < 8e6
    tok = load_model(path)
    assert isinstance(tok, BitwiseTokenizer) and tok.config.bits == bits
    x = to_tensor(fit(open_image(PICTURE), SCHEDULE.pixel_hw))
    with torch.no_grad():
        a, b = tok.encode_scales(x, SCHEDULE.scales), tok.encode_scales(x, SCHEDULE.scales)
    assert all(torch.equal(p, q) for p, q in zip(a.bits, b.bits))
    assert a.bits[-1].shape == (1, 16, 16, bits)
    shapes_only = load_model(ROOT / "assets" / "embedded" / "tokenizer.safetensors")
    general, shapes = _final_psnr(tok, x), _final_psnr(shapes_only, x)
    assert general > 12.0 and general > shapes + 0.5, (general, shapes)
