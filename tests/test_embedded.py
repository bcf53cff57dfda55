"""The shipped embedded model (assets/embedded): loads offline, 128 px images in three aspect ratios, seeded."""
import numpy as np
import pytest
import torch

from infinity import InfinityPipeline
from infinity.data.shapes import caption, held_out_scenes
from infinity.pipeline import EMBEDDED_DIR


@pytest.fixture(scope="module")
def pipe(monkeypatch_module):
    torch.set_num_threads(1)
    return InfinityPipeline.from_pretrained(device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield mp


def test_the_embedded_model_is_shipped_within_40_mb():
    size = sum(p.stat().st_size for p in EMBEDDED_DIR.iterdir())
    assert 0 < size <= 40 * 2**20


@pytest.mark.parametrize("aspect_ratio, hw", [("1:1", (128, 128)), ("3:2", (128, 192)), ("2:3", (192, 128))])
def test_held_out_prompt_in_each_aspect_ratio(pipe, aspect_ratio, hw):
    prompt = caption(held_out_scenes(1, 1)[0])
    out = pipe(prompt, aspect_ratio=aspect_ratio, seed=0)
    assert out.image.mode == "RGB" and out.image.size == (hw[1], hw[0])


def test_same_seed_same_image_other_seed_other_image(pipe):
    prompt = caption(held_out_scenes(2, 1)[0])
    a, b, c = (np.asarray(pipe(prompt, seed=s).image) for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
