"""python -m infinity.eval tokenizer: the JPEG and thumbnail references on known images, the 1:1 schedules, an end
to end run on two tiny tokenizers and a folder with a corrupt image, and the error paths."""
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from infinity.checkpoints import load_model, save_model
from infinity.eval.__main__ import main
from infinity.eval.tokenizers import (
    JPEG_QUALITIES, evaluate, jpeg_at_budget, jpeg_record, thumbnail, thumbnail_record,
)
from infinity.images import to_tensor
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.schedules import shapes_schedules, square_schedule
from infinity.transformer import Infinity
from tiny_model import TRANSFORMER


def _numpy_psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return 10 * math.log10(255**2 / np.mean(diff**2))


def _photo(size: int = 64, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: something JPEG neither wins nor loses outright."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([200 * x, 180 * y, 120 * (x + y) / 2], -1) + rng.normal(0, 20, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_jpeg_is_the_largest_file_within_the_budget_and_its_psnr_is_right():
    img, budget = _photo(), 8 * 1500
    chosen = jpeg_at_budget(img, budget)
    sizes = {}
    for q in JPEG_QUALITIES:  # independently: Pillow's own files at every quality
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=q, optimize=True)
        sizes[q] = 8 * len(buffer.getvalue())
    assert chosen.within_budget and chosen.bits == sizes[chosen.quality] <= budget
    assert all(bits > budget or bits <= chosen.bits for bits in sizes.values())
    assert 1 < chosen.quality < 95  # the budget binds: neither end of the range
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=chosen.quality, optimize=True)
    expected = _numpy_psnr(Image.open(buffer).convert("RGB"), img)
    record = jpeg_record(budget, [img], [], img.width)
    assert record.psnr_db == pytest.approx(expected, abs=1e-3)
    assert record.bits_final_scale == chosen.bits and record.over_budget["photos"] == 0


def test_jpeg_over_budget_is_said_not_hidden():
    img = _photo()
    chosen = jpeg_at_budget(img, 100)
    assert not chosen.within_budget and chosen.quality == 1 and chosen.bits > 100
    record = jpeg_record(100, [img, _photo(seed=1)], [], img.width)
    assert record.over_budget["photos"] == 2 and "2 of 2 photos exceed 100 bits" in record.notes[0]


def test_thumbnail_on_known_images():
    constant = Image.new("RGB", (128, 128), (90, 160, 30))
    assert np.array_equal(np.asarray(thumbnail(constant)), np.asarray(constant))
    assert thumbnail_record([constant], [], 128).psnr_db > 100
    # A one-pixel checkerboard averages to mid-grey in every 8x8 cell: every pixel is 127 or 128 off.
    board = Image.fromarray((np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    expected = 10 * math.log10(255**2 / ((127**2 + 128**2) / 2))
    record = thumbnail_record([board], [], 128)
    assert record.psnr_db == pytest.approx(expected, abs=1e-3) and record.bits_final_scale == 16 * 16 * 24
    assert record.bpp_final_scale == pytest.approx(16 * 16 * 24 / 128**2)


def test_square_schedules():
    assert square_schedule(128, 8).scales == shapes_schedules()["1:1"].scales  # the embedded model's
    assert square_schedule(128, 16).scales == ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8))
    assert square_schedule(80, 8).scales[-2:] == ((8, 8), (10, 10))
    with pytest.raises(ValueError, match="not a multiple of the tokenizer's patch size 8"):
        square_schedule(100, 8)


def _tokenizer(tmp_path, name, bits, patch, seed):
    torch.manual_seed(seed)
    config = TokenizerConfig(bits=bits, base_channels=32, channel_multipliers=(1,) * (patch.bit_length()),
                             num_res_blocks=1, patch_size=patch)
    return save_model(BitwiseTokenizer(config), tmp_path / f"{name}.safetensors")


@pytest.fixture
def inputs(tmp_path, one_thread):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _photo(48, seed=2).save(photos / "a.png")
    _photo(40, seed=3).save(photos / "sub" / "b.jpg")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "notes.txt").write_text("not an image either, and not counted")
    Image.new("RGB", (50, 40), (10, 20, 30)).save(photos / "flat.png")
    weights = [_tokenizer(tmp_path, "d4", 4, 8, 0), _tokenizer(tmp_path, "d8", 8, 4, 1)]
    return tmp_path, weights, photos


def test_end_to_end_on_two_tokenizers(inputs, capsys):
    tmp_path, weights, photos = inputs
    out = tmp_path / "results" / "r.json"
    argv = ["tokenizer", "--weights", *map(str, weights), "--images", str(photos), "--size", "32", "--shapes", "1"]
    assert main(argv + ["--out", str(out)]) == 0
    table = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["images"]["used"] == 2 and results["images"]["unreadable"] == ["broken.jpg"]
    assert results["images"]["one_colour"] == ["flat.png"] and "(skipped: 1 unreadable, 1 of one colour)" in table
    records = {r["name"]: r for r in results["records"]}
    # JPEG at each tokenizer's final-scale bits (64, 512) and at all the bits its decoder needs (84, 968)
    assert list(records) == [str(weights[0]), str(weights[1]), "JPEG <= 64 bits", "JPEG <= 84 bits",
                             "JPEG <= 512 bits", "JPEG <= 968 bits", "thumbnail 16x16 bicubic"]
    assert all(name in table for name in records)
    d4, d8 = records[str(weights[0])], records[str(weights[1])]
    assert (d4["bits_final_scale"], d4["bits_all_scales"]) == (4 * 16, 4 * (1 + 4 + 16))
    assert (d8["bits_final_scale"], d8["bits_all_scales"]) == (8 * 64, 8 * (1 + 4 + 16 + 36 + 64))
    assert d8["bpp_final_scale"] == pytest.approx(512 / 32**2)
    assert len(d4["psnr_per_scale_db"]) == 3 and len(d8["psnr_per_scale_db"]) == 5
    for r in records.values():
        assert math.isfinite(r["psnr_db"]) and set(r["shapes"]) == {"1", "2", "3"}
        assert all(s["images"] == 1 and 0 <= s["parser_agreement"] <= 1 for s in r["shapes"].values())
    # The final-scale PSNR is the tokenizer's plain reconstruction, averaged over the two readable photos.
    tok = load_model(weights[1])
    expected = []
    for name in ("a.png", "sub/b.jpg"):
        img = Image.open(photos / name).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
        x = to_tensor(img)
        with torch.no_grad():
            recon = tok.decode(tok.encode_scales(x, square_schedule(32, 4).scales).quantized)
        expected.append(10 * math.log10(4 / (recon - x).pow(2).mean().item()))
    assert d8["psnr_db"] == pytest.approx(np.mean(expected), abs=2e-3)
    pooled = 10 * math.log10(4 / np.mean([4 * 10 ** (-p / 10) for p in expected]))
    assert d8["psnr_pooled_db"] == pytest.approx(pooled, abs=2e-3) and d8["psnr_pooled_db"] <= d8["psnr_db"]
    # No JPEG fits 64 bits: the record says so.
    assert records["JPEG <= 64 bits"]["over_budget"] == {"photos": 2, "shapes scenes": 3}
    assert "(over budget: see notes)" in table
    again = evaluate(weights, photos, size=32, shapes=1)
    assert again == results  # deterministic
    first = evaluate(weights[:1], photos, size=32, shapes=0, max_images=1)
    assert first["images"]["used"] == 1 and all(not r["shapes"] for r in first["records"])


def test_error_paths(inputs, capsys):
    tmp_path, weights, photos = inputs
    transformer = save_model(Infinity(TRANSFORMER), tmp_path / "transformer.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    empty, corrupt_only = tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir(), corrupt_only.mkdir()
    (corrupt_only / "x.png").write_bytes(b"\x89PNG truncated")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(corrupt_only / "black.png")
    cases = [
        ([str(tmp_path / "missing.safetensors")], photos, [], "missing.safetensors: no such file"),
        ([str(transformer)], photos, [], "holds a Infinity, not a tokenizer"),
        ([str(tmp_path / "junk.safetensors")], photos, [], "not a readable safetensors file"),
        ([str(weights[0])], tmp_path / "nowhere", [], "nowhere: no such folder"),
        ([str(weights[0])], empty, [], "empty: no image files, nothing to evaluate on"),
        ([str(weights[0])], corrupt_only, [],
         "corrupt: 1 unreadable image files and 1 images of one colour, nothing to evaluate on"),
        ([str(weights[0])], photos, ["--size", "36"], "--size 36 is not a multiple of the tokenizer's patch size 8"),
        ([str(weights[0])], photos, ["--shapes", "40"], "only 31 single-object scenes are held out"),
        ([str(weights[0])], photos, ["--max-images", "0"], "--max-images must be >= 1"),
    ]
    for files, folder, extra, message in cases:
        assert main(["tokenizer", "--weights", *files, "--images", str(folder), *extra]) == 2, message
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.endswith("\n"), err
        assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1], err
