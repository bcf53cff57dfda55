import itertools
import random

import numpy as np
import pytest
from PIL import Image

from infinity.data.scene_parser import ParsedScene, object_recall, parse_image, scene_matches, score
from infinity.data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Scene, ShapeObject, render, sample_scene

SIZES_HW = [(128, 128), (128, 192), (192, 128), (256, 256)]


def reconstruction_like(img_HW3: np.ndarray, rng: np.random.Generator, noise: float = 4.0) -> np.ndarray:
    """A 3x3 box blur plus Gaussian noise: roughly what a VAE round trip does to a crisp render."""
    H, W = img_HW3.shape[:2]
    padded = np.pad(img_HW3.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)) / 9
    return np.clip(blurred + rng.normal(0, noise, blurred.shape), 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def renders():
    rng = random.Random(0)
    scenes = [sample_scene(rng, rng.choice((1, 2, 3)), rng.choice(("train", "heldout")), background_caption_prob=0.5)
              for _ in range(500)]
    return scenes, [render(scene, *SIZES_HW[i % len(SIZES_HW)]) for i, scene in enumerate(scenes)]


def test_parses_ground_truth_renders(renders):
    scenes, images = renders
    accuracy = score(images, scenes)
    assert set(accuracy) == {"all", "1", "2", "3"}
    assert accuracy["all"] >= 0.98, accuracy  # measured: 1.0


def test_parses_blurred_noisy_renders(renders):
    scenes, images = renders
    rng = np.random.default_rng(0)
    accuracy = score([reconstruction_like(img, rng) for img in images], scenes)
    assert accuracy["all"] >= 0.95, accuracy  # measured: 1.0


def test_reads_every_attribute():
    objects = (ShapeObject("circle", "orange", "large", "at the top left"),
               ShapeObject("square", "purple", "small", "on the right"),
               ShapeObject("triangle", "yellow", "small", "at the bottom"))
    parsed = parse_image(render(Scene(objects, "gray"), 128, 192))
    assert parsed.background == "gray"
    assert sorted(parsed.objects, key=lambda o: o.position) == sorted(objects, key=lambda o: o.position)


def test_changed_colour_shape_size_or_position_is_a_mismatch():
    obj = ShapeObject("circle", "red", "large", "in the center")
    scene = Scene((obj, ShapeObject("square", "blue", "small", "at the top")), "white", name_background=True)
    parsed = parse_image(reconstruction_like(render(scene, 128, 128), np.random.default_rng(1)))
    assert scene_matches(parsed, scene)
    for change in [dict(color="green"), dict(shape="triangle"), dict(shape="square"), dict(size="small"),
                   dict(position="on the left")]:
        changed = Scene((ShapeObject(**{**vars(obj), **change}), scene.objects[1]), "white", name_background=True)
        assert not scene_matches(parsed, changed), change  # the image does not show the changed scene
        assert not scene_matches(parse_image(render(changed, 128, 128)), scene), change  # nor the other way
    assert not scene_matches(parsed, Scene((obj,), "white"))  # an extra object
    assert not scene_matches(parsed, Scene(scene.objects + (ShapeObject("circle", "red", "small", "on the left"),)))
    assert not scene_matches(parsed, Scene(scene.objects, "black", name_background=True))
    assert scene_matches(parsed, Scene(scene.objects, "black", name_background=False))  # background not asked for
    assert scene_matches(parsed, Scene(scene.objects, None))


def test_object_recall_gives_partial_credit_per_attribute():
    red, blue = ShapeObject("circle", "red", "large", "in the center"), ShapeObject("square", "blue", "small", "at the top")
    scene = Scene((red, blue))
    assert object_recall(parse_image(render(scene, 128, 128)), scene) == dict(position=1, color=1, shape=1, size=1)
    shown = Scene((ShapeObject("triangle", "red", "small", "in the center"),))  # red's cell and colour; blue missing
    assert object_recall(parse_image(render(shown, 128, 128)), scene) == dict(position=0.5, color=0.5, shape=0, size=0)


def test_evaluator_scores_a_tokenizer_with_partial_credit():
    import torch

    from infinity.eval.shapes import evaluate_tokenizer, evaluation_scenes
    from infinity.schedules import Schedule
    from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig

    class Identity(BitwiseTokenizer):  # reconstructs perfectly: what the evaluator reports must be all 1
        def decode(self, f):
            return self.images

        def encode_scales(self, x, scales):
            self.images = x
            return super().encode_scales(x, scales)

    torch.manual_seed(0)
    tok = Identity(TokenizerConfig(bits=4, base_channels=32, channel_multipliers=(1, 1), num_res_blocks=1, patch_size=2))
    schedule = Schedule(((1, 1), (32, 32)), patch_size=2, h_div_w=1.0)
    scores = evaluate_tokenizer(tok, schedule, evaluation_scenes({1: 3, 2: 2}), batch_size=4).to_dict()
    assert scores["1"]["images"] == 3 and scores["2"]["images"] == 2
    for row in scores.values():
        assert row["accuracy"] == 1.0 and row["position"] == row["color"] == row["shape"] == row["size"] == 1.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("color", COLORS)
def test_each_shape_and_colour_on_each_background_in_every_cell(shape, color):
    rng = np.random.default_rng(2)
    for background, position in zip(itertools.cycle(BACKGROUNDS), POSITIONS):
        for size in ("small", "large"):
            scene = Scene((ShapeObject(shape, color, size, position),), background, name_background=True)
            assert scene_matches(parse_image(reconstruction_like(render(scene, 128, 128), rng)), scene), scene


def test_ignores_specks_and_off_palette_pixels():
    scene = Scene((ShapeObject("triangle", "green", "large", "on the left"),), "black", name_background=True)
    img = render(scene, 128, 128)
    rng = np.random.default_rng(3)
    for _ in range(40):  # single pixels and 2x2 dots of object colours, plus off-palette pixels
        y, x = rng.integers(0, 126, size=2)
        img[y:y + rng.integers(1, 3), x:x + rng.integers(1, 3)] = list(COLORS.values())[rng.integers(len(COLORS))]
        img[rng.integers(128), rng.integers(128)] = (90, 90, 200)
    assert scene_matches(parse_image(img), scene)


def test_inputs():
    scene = Scene((ShapeObject("square", "blue", "large", "in the center"),), "white")
    img = render(scene, 96, 96)
    assert parse_image(Image.fromarray(img)) == parse_image(img)
    assert isinstance(parse_image(img), ParsedScene)
    with pytest.raises(ValueError, match="RGB"):
        parse_image(img[..., 0])
    with pytest.raises(ValueError, match="images for"):
        score([img], [scene, scene])


def test_a_failure_caused_only_by_something_extra_is_told_apart():
    from infinity.data.scene_parser import fails_only_by_extras

    red, blue = ShapeObject("circle", "red", "large", "in the center"), ShapeObject("square", "blue", "small", "at the top")
    both = parse_image(render(Scene((red, blue), "white"), 128, 128))
    assert fails_only_by_extras(both, Scene((red,), "white"))  # red is right; the blue square is extra
    assert not fails_only_by_extras(both, Scene((red, blue), "white"))  # a pass is no failure
    wrong = Scene((ShapeObject("circle", "green", "large", "in the center"),))
    assert not fails_only_by_extras(both, wrong)  # the asked object is not there
    assert not fails_only_by_extras(both, Scene((red,), "black", name_background=True))  # wrong background
