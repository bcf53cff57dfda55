"""The evaluator's diversity figures on hand-made images: background spread against the training shares, and the
mean pixel difference between seeds."""
import numpy as np
import pytest

from infinity.data.shapes import BACKGROUNDS, caption, parse_caption, render
from infinity.eval.diversity import background_tv, mean_pixel_difference, measure, open_background_scenes

SCENE = parse_caption("a large red square on the left")


def scene_on(background: str) -> np.ndarray:
    return render(type(SCENE)(SCENE.objects, background), 48, 48)


def test_backgrounds_in_the_training_shares_score_zero_and_one_background_two_thirds():
    spread = measure([[scene_on(b) for b in BACKGROUNDS]])
    assert spread.backgrounds == dict.fromkeys(BACKGROUNDS, 1) and spread.distinct_backgrounds == 3
    assert spread.background_tv == pytest.approx(0.0)
    same = measure([[scene_on("gray")] * 3, [scene_on("black")] * 3])
    assert same.distinct_backgrounds == 1 and same.pixel_difference == 0.0
    assert background_tv({"gray": 6}) == pytest.approx(2 / 3)


def test_mean_pixel_difference_over_pairs():
    a, b, c = (np.full((2, 2, 3), v, dtype=np.uint8) for v in (0, 10, 40))
    assert mean_pixel_difference([a, b, c]) == pytest.approx((10 + 40 + 30) / 3)
    assert mean_pixel_difference([a]) == 0.0


def test_open_background_prompts_do_not_name_one():
    scenes = open_background_scenes(5)
    assert len(scenes) == 5 and all("background" not in caption(s) and len(s.objects) == 1 for s in scenes)
