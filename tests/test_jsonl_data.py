import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from infinity.data.jsonl import JsonlDataset, crop_loss

BUCKETS = {1.0: (32, 32), 0.666: (32, 48)}


def save_image(path, height, width, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), color, np.uint8)).save(path)
    return path


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def dataset_dir(tmp_path):
    save_image(tmp_path / "images" / "square.png", 64, 64)
    save_image(tmp_path / "images" / "wide.png", 60, 90, color=(30, 30, 200))
    save_image(tmp_path / "images" / "tall.png", 300, 100)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path


def test_good_lines_load_into_their_buckets(dataset_dir):
    absolute = save_image(dataset_dir / "elsewhere" / "abs.png", 64, 64)
    path = write_jsonl(dataset_dir / "1.000_000003.jsonl", [
        {"image_path": "images/square.png", "h_div_w": 1.0, "text": "a red square", "long_caption": "long"},
        {"image_path": "images/wide.png", "h_div_w": 0.6667, "long_caption": "a blue field",
         "long_caption_type": "InternVL 2.0"},
        "",
        {"image_path": str(absolute), "h_div_w": "1.0", "caption": "an absolute path"},
    ])
    ds = JsonlDataset(path, BUCKETS)
    assert ds.skipped == [] and len(ds) == 3
    assert ds.bucket_indices() == {1.0: [0, 2], 0.666: [1]}
    assert [item.line_no for item in ds.items] == [1, 2, 4]
    img, caption = ds.load(0)
    assert caption == "a red square"  # "text" first, as the brief's field; then "long_caption", "caption"
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert torch.allclose(img[:, 16, 16], torch.tensor([200, 30, 30]) / 255 * 2 - 1)
    img, caption = ds[1]
    assert caption == "a blue field" and img.shape == (3, 32, 48)
    assert ds.load(2)[1] == "an absolute path"


def test_bad_lines_are_reported_and_skipped(dataset_dir, caplog):
    path = write_jsonl(dataset_dir / "data.jsonl", [
        {"image_path": "images/square.png", "h_div_w": 1.0, "text": "good"},
        {"image_path": "images/missing.png", "h_div_w": 1.0, "text": "missing file"},
        {"image_path": "images/corrupt.png", "h_div_w": 1.0, "text": "corrupt image"},
        {"image_path": "images/tall.png", "h_div_w": 3.0, "text": "no bucket this tall"},
        '{"image_path": "images/square.png", "h_div_w": 1.0, "text": ',
        {"image_path": "images/square.png", "text": "no h_div_w"},
        {"h_div_w": 1.0, "text": "no image_path"},
        {"image_path": "images/square.png", "h_div_w": 1.0, "text": ""},
        {"image_path": "images/square.png", "h_div_w": 0.6667, "text": "h_div_w disagrees with the file"},
        [1, 2, 3],
        {"image_path": "images/square.png", "h_div_w": 1.0, "text": "good again"},
    ])
    with caplog.at_level(logging.WARNING, logger="infinity.data.jsonl"):
        ds = JsonlDataset(path, BUCKETS)
    assert [item.caption for item in ds.items] == ["good", "good again"]
    reasons = dict(ds.skipped)
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "missing image" in reasons[2]
    assert "unreadable image" in reasons[3]
    assert "too far from every bucket" in reasons[4]
    assert "malformed JSON" in reasons[5]
    assert "h_div_w" in reasons[6]
    assert "image_path" in reasons[7]
    assert "no caption" in reasons[8]
    assert "disagrees" in reasons[9]
    assert "not a JSON object" in reasons[10]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 9 and all(f"{path}:" in w for w in warnings)
    assert any(":4 skipped" in w and "too far" in w for w in warnings)


def test_image_that_fails_at_load_time_is_skipped(dataset_dir, caplog):
    path = write_jsonl(dataset_dir / "data.jsonl", [{"image_path": "images/square.png", "h_div_w": 1.0, "text": "x"}])
    ds = JsonlDataset(path, BUCKETS)
    (dataset_dir / "images" / "square.png").write_bytes(b"gone bad since")
    with caplog.at_level(logging.WARNING, logger="infinity.data.jsonl"):
        assert ds.load(0) is None
    assert ds.skipped and ds.skipped[0][0] == 1 and "failed to load" in ds.skipped[0][1]
    assert "failed to load" in caplog.text


def test_aspect_tolerance():
    assert crop_loss(1.2, 1.0) == pytest.approx(1 / 6)
    assert crop_loss(0.5, 1.0) == crop_loss(2.0, 1.0) == 0.5


def test_mild_aspect_mismatch_goes_to_the_nearest_bucket(tmp_path):
    save_image(tmp_path / "a.png", 72, 60)  # h/w 1.2: a 1/6 crop into the square bucket
    save_image(tmp_path / "b.png", 78, 60)  # h/w 1.3: too far
    path = write_jsonl(tmp_path / "d.jsonl", [{"image_path": "a.png", "h_div_w": 1.2, "text": "a"},
                                              {"image_path": "b.png", "h_div_w": 1.3, "text": "b"}])
    ds = JsonlDataset(path, BUCKETS)
    assert ds.bucket_indices() == {1.0: [0]} and [n for n, _ in ds.skipped] == [2]
    assert ds.load(0)[0].shape == (3, 32, 32)
    assert len(JsonlDataset(path, BUCKETS, max_aspect_error=0.3)) == 2


def test_bad_arguments(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [])
    with pytest.raises(ValueError, match="bucket"):
        JsonlDataset(path, {})
    with pytest.raises(ValueError, match="bucket"):
        JsonlDataset(path, {1.0: (0, 32)})
    with pytest.raises(FileNotFoundError):
        JsonlDataset(tmp_path / "nope.jsonl", BUCKETS)
