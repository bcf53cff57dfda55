import itertools
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infinity.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesDataset,
    caption,
    held_out_scenes,
    is_held_out,
    parse_caption,
    render,
    sample_scene,
)
from infinity.images import to_tensor

ALL_SINGLE = [ShapeObject(*t) for t in itertools.product(SHAPES, COLORS, SIZES, POSITIONS)]


def test_vocabulary():
    assert SHAPES == ("circle", "square", "triangle") and SIZES == ("small", "large")
    assert list(POSITIONS) == ["at the top left", "at the top", "at the top right", "on the left", "in the center",
                               "on the right", "at the bottom left", "at the bottom", "at the bottom right"]
    assert sorted(POSITIONS.values()) == [(r, c) for r in range(3) for c in range(3)]
    assert {"red", "green", "blue", "yellow", "orange", "purple"} <= set(COLORS)
    for (a, rgb_a), (b, rgb_b) in itertools.combinations(COLORS.items(), 2):
        assert np.linalg.norm(np.subtract(rgb_a, rgb_b)) >= 80, (a, b)  # yellow / orange are the closest
    for (a, rgb_a), (b, rgb_b) in itertools.product(COLORS.items(), BACKGROUNDS.items()):
        assert np.linalg.norm(np.subtract(rgb_a, rgb_b)) >= 90, (a, b)


def test_caption_reads_as_people_write():
    a = ShapeObject("circle", "red", "large", "at the top left")
    b = ShapeObject("square", "blue", "small", "in the center")
    c = ShapeObject("triangle", "green", "large", "on the right")
    assert caption(Scene((a,))) == "a large red circle at the top left"
    assert caption(Scene((b, c))) == "a small blue square in the center and a large green triangle on the right"
    assert caption(Scene((a, b, c), "black", name_background=True)) == (
        "a large red circle at the top left, a small blue square in the center and a large green triangle on the "
        "right on a black background")


def test_parse_caption_inverts_caption():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng, rng.choice((1, 2, 3)), "train", background_caption_prob=0.5)
        parsed = parse_caption(caption(scene))
        assert parsed.objects == scene.objects
        assert parsed.name_background == scene.name_background
        assert parsed.background == (scene.background if scene.name_background else None)


def test_parse_caption_is_lenient_about_form_and_strict_about_vocabulary():
    scene = parse_caption("  A Small Blue Square in the center, and a large red circle on the left. ")
    assert scene.objects == (ShapeObject("square", "blue", "small", "in the center"),
                             ShapeObject("circle", "red", "large", "on the left"))
    assert scene.background is None and not scene.name_background
    for text in ["a small pink square in the center", "a large red hexagon on the left", "two red circles",
                 "a small red circle in the center on a plaid background", "",
                 "a small red circle in the center and a large red square in the center"]:
        assert parse_caption(text) is None, text


def test_scene_rejects_bad_objects():
    with pytest.raises(ValueError, match="distinct positions"):
        Scene((ShapeObject("circle", "red", "small", "on the left"),
               ShapeObject("square", "blue", "large", "on the left")))
    with pytest.raises(ValueError, match="unknown color"):
        ShapeObject("circle", "pink", "small", "on the left")
    with pytest.raises(ValueError, match="unknown background"):
        Scene((ShapeObject("circle", "red", "small", "on the left"),), "plaid")


@pytest.mark.parametrize("hw", [(128, 128), (128, 192), (192, 128), (64, 96), (1024, 576)])
def test_render_puts_each_object_in_its_cell_at_any_size(hw):
    H, W = hw
    objects = (ShapeObject("circle", "red", "large", "at the top left"),
               ShapeObject("square", "blue", "small", "in the center"),
               ShapeObject("triangle", "yellow", "large", "at the bottom right"))
    img = render(Scene(objects, "white"), H, W)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    assert (img[0, 0] == BACKGROUNDS["white"]).all() and (img[-1, 0] == BACKGROUNDS["white"]).all()
    for o in objects:
        row, col = POSITIONS[o.position]
        cell = img[row * H // 3:(row + 1) * H // 3, col * W // 3:(col + 1) * W // 3]
        mask = (cell == COLORS[o.color]).all(-1)
        ys, xs = np.nonzero(mask)
        assert abs(ys.mean() - cell.shape[0] / 2) < 0.2 * cell.shape[0]  # centred (a triangle's centroid is low)
        assert abs(xs.mean() - cell.shape[1] / 2) < 1
        extent = xs.max() - xs.min() + 1
        expected = {"small": 0.4, "large": 0.8}[o.size] * min(H / 3, W / 3)
        assert abs(extent - expected) <= max(1.5, 0.02 * expected)
    assert mask.sum() == pytest.approx(0.5 * expected**2, rel=0.1)  # the triangle fills half its box


def test_shapes_at_128_are_large_enough_and_distinct():
    areas = {}
    for shape in SHAPES:
        img = render(Scene((ShapeObject(shape, "green", "small", "in the center"),)), 128, 128)
        mask = (img == COLORS["green"]).all(-1)
        ys, xs = np.nonzero(mask)
        assert xs.max() - xs.min() + 1 >= 14 and ys.max() - ys.min() + 1 >= 14
        areas[shape] = mask.sum()
        if shape == "triangle":
            assert mask[ys.min()].sum() < mask[ys.max()].sum() / 4  # points up
    assert areas["square"] > areas["circle"] > areas["triangle"]


def test_held_out_rule_is_a_fixed_tenth():
    held = [o for o in ALL_SINGLE if is_held_out(Scene((o,)))]
    assert 0.05 < len(held) / len(ALL_SINGLE) < 0.15
    assert len(held) == 31  # pins the hash: the split must never change between runs or versions
    a, b = ShapeObject("circle", "red", "small", "on the left"), ShapeObject("square", "blue", "large", "on the right")
    assert is_held_out(Scene((a, b), "black")) == is_held_out(Scene((b, a), "white"))


def test_sampling_respects_the_split():
    rng = random.Random(1)
    for n in (1, 2, 3):
        for _ in range(100):
            assert not is_held_out(sample_scene(rng, n, "train"))
            assert is_held_out(sample_scene(rng, n, "heldout"))
    with pytest.raises(ValueError, match="split"):
        sample_scene(rng, 1, "test")


def test_held_out_scenes_are_a_fixed_distinct_list():
    for n in (1, 2, 3):
        scenes = held_out_scenes(n, 20, seed=0)
        assert scenes == held_out_scenes(n, 20, seed=0)
        assert len({frozenset(s.objects) for s in scenes}) == 20
        assert all(is_held_out(s) and len(s.objects) == n for s in scenes)
    assert held_out_scenes(2, 20, seed=1) != held_out_scenes(2, 20, seed=0)
    with pytest.raises(ValueError, match="only 31"):
        held_out_scenes(1, 32)


def test_dataset_items_do_not_depend_on_call_order():
    a, b = ShapesDataset(seed=3), ShapesDataset(seed=3)
    first = [a.sample(i, 128, 192)[1] for i in range(20)]
    assert [b.sample(i, 128, 192)[1] for i in reversed(range(20))][::-1] == first
    assert [ShapesDataset(seed=4).sample(i, 128, 192)[1] for i in range(20)] != first
    img, text, scene = a.sample(7, 128, 192)
    assert img.shape == (3, 128, 192) and img.dtype == torch.float32 and -1 <= img.min() and img.max() <= 1
    assert text == caption(scene)
    assert torch.equal(img, to_tensor(Image.fromarray(render(scene, 128, 192)))[0])
    assert a.sample(7, 256, 256)[2] == scene  # the same scene at every size
    assert torch.equal(b.sample(7, 128, 192)[0], img)
    assert a[7][0].shape == (3, 128, 128)


def test_dataset_options():
    train = ShapesDataset(num_objects=(2,))
    assert all(len(train.scene(i).objects) == 2 and not is_held_out(train.scene(i)) for i in range(50))
    heldout = ShapesDataset(split="heldout", num_objects=(1, 3), weights=(0, 1), background_caption_prob=1.0)
    scenes = [heldout.scene(i) for i in range(50)]
    assert all(len(s.objects) == 3 and is_held_out(s) and s.name_background for s in scenes)
    assert ShapesDataset(length=10)[9] is not None
    with pytest.raises(IndexError):
        ShapesDataset(length=10)[10]
    with pytest.raises(ValueError, match="weights"):
        ShapesDataset(num_objects=(1, 2), weights=(1,))


def test_dataset_is_the_same_in_another_process():
    # Python salts str hashes per process; the dataset must not depend on that.
    code = ("from infinity.data.shapes import ShapesDataset; "
            "print([ShapesDataset(seed=3).sample(i, 32, 32)[1] for i in range(5)])")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([ShapesDataset(seed=3).sample(i, 32, 32)[1] for i in range(5)])
