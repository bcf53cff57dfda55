"""The shipped general tokenizers (assets/tokenizers): load offline, encode deterministically, and keep their
measured quality on held-out photographs shipped for the test (tests/fixtures/photos: packages kept out of
training): a PSNR floor a little under what each reaches, and colours kept (a brightened, darkened or desaturated
decoder fails)."""
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import load_model
from infinity.images import fit, open_image, psnr, to_tensor
from infinity.schedules import shapes_schedules, square_schedule
from infinity.tokenizer import BitwiseTokenizer

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = shapes_schedules()["1:1"]
PHOTOS = sorted((ROOT / "tests" / "fixtures" / "photos").glob("*.png"))
# a beige background and soft colours: outside the three flat backgrounds the shapes tokenizer was trained on
PICTURE = ROOT / "assets" / "examples" / "shapes.png"

# Mean PSNR over PHOTOS of the shipped fp16 files, measured when they were shipped (python -m pytest prints it on
# failure); the floor is MARGIN_DB under it: a regressed or swapped file fails, float rounding does not.
MEASURED_DB = {8: None, 16: None, 32: None}
MARGIN_DB = 1.5
# Colour: the mean of each channel of each photo (0..255) within this many levels of the input's, and the mean
# distance of the pixels from their grey (chroma) at least this share of the input's, where the input has colour.
CHANNEL_LEVELS = None
CHROMA_SHARE = None


def _tokenizer(bits: int) -> BitwiseTokenizer:
    return load_model(ROOT / "assets" / "tokenizers" / f"general-d{bits}.safetensors")


@torch.no_grad()
def _reconstruct(tok: BitwiseTokenizer, x: torch.Tensor) -> torch.Tensor:
    scales = square_schedule(x.shape[-1], tok.config.patch_size).scales
    return tok.decode(tok.encode_scales(x, scales).quantized).clamp(-1, 1)


def _photos() -> torch.Tensor:
    return torch.cat([to_tensor(open_image(p)) for p in PHOTOS])


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) * 127.5


def _chroma(x: torch.Tensor) -> torch.Tensor:
    v = _levels(x)
    return (v - v.mean(1, keepdim=True)).abs().mean((1, 2, 3))


def quality(recon: torch.Tensor, x: torch.Tensor) -> dict:
    """Mean PSNR, the largest channel-mean error in levels, the smallest chroma share over coloured photos."""
    coloured = _chroma(x) > 8
    return {"psnr_db": float(psnr(recon, x).mean()),
            "channel_levels": float((_levels(recon).mean((2, 3)) - _levels(x).mean((2, 3))).abs().max()),
            "chroma_share": float((_chroma(recon)[coloured] / _chroma(x)[coloured]).min())}


def _passes(q: dict, bits: int) -> bool:
    return (q["psnr_db"] >= MEASURED_DB[bits] - MARGIN_DB and q["channel_levels"] <= CHANNEL_LEVELS
            and q["chroma_share"] >= CHROMA_SHARE)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_general_tokenizer_loads_offline_and_encodes_deterministically(bits):
    path = ROOT / "assets" / "tokenizers" / f"general-d{bits}.safetensors"
    assert path.stat().st_size < 8e6
    tok = _tokenizer(bits)
    assert isinstance(tok, BitwiseTokenizer) and tok.config.bits == bits
    x = to_tensor(fit(open_image(PICTURE), SCHEDULE.pixel_hw))
    with torch.no_grad():
        a, b = tok.encode_scales(x, SCHEDULE.scales), tok.encode_scales(x, SCHEDULE.scales)
    assert all(torch.equal(p, q) for p, q in zip(a.bits, b.bits))
    assert a.bits[-1].shape == (1, 16, 16, bits)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_shipped_tokenizer_keeps_its_quality_and_colours_and_a_broken_decoder_fails(bits):
    x = _photos()
    recon = _reconstruct(_tokenizer(bits), x)
    q = quality(recon, x)
    assert _passes(q, bits), (q, MEASURED_DB[bits])
    grey = recon.mean(1, keepdim=True)
    for broken in (recon + 45 / 127.5, recon - 45 / 127.5, grey + 0.4 * (recon - grey)):  # brighter, darker, faded
        assert not _passes(quality(broken.clamp(-1, 1), x), bits)
