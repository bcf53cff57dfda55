"""The image corpus builder and the folder data source of the tokenizer trainer."""
import json
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from infinity.data.corpus import Source, backdrop, build_corpus, random_crop, to_rgb
from infinity.data.folder import ImageFolder, random_resized_crop
from infinity.train.engine import Distributed, OptimConfig
from infinity.train.recipes import RECIPES
from infinity.train.tokenizer_trainer import TokenizerLoss, TokenizerTask

TINY = RECIPES["shapes-tiny"]


@pytest.fixture
def fake_pictures(tmp_path):
    """Good pictures in several modes, one corrupt file, one tiny one, one picture inside a .pk3 archive."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(src / "photo.jpg")
    rgba = np.zeros((120, 120, 4), np.uint8)
    rgba[30:90, 30:90] = (255, 0, 0, 255)  # an opaque red square, transparent around it
    Image.fromarray(rgba, "RGBA").save(src / "sub" / "sprite.png")
    Image.fromarray(rng.integers(0, 255, (100, 80), dtype=np.uint8), "L").save(src / "gray.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src / "icon.png")
    with zipfile.ZipFile(src / "textures.pk3", "w") as z:
        buf = src / "wall.tga"
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf)
        z.write(buf, "textures/wall.tga")
        buf.unlink()
    return src


def test_corpus_skips_bad_files_converts_modes_and_writes_a_manifest(tmp_path, fake_pictures):
    out = tmp_path / "corpus"
    sources = [Source("fake", "photo", folder=str(fake_pictures), crops=3),
               Source("shapes", "shapes", crops=4),
               Source("held", "photo", folder=str(fake_pictures), crops=1, split="heldout")]
    manifest = build_corpus(out, sources, seed=0)
    fake = manifest["sources"][0]
    assert fake["files_read"] == 6  # photo, sprite, gray, broken, icon, the archive's texture
    assert fake["skipped"] == {"corrupt or truncated": 1, "smaller than 64 px": 1}
    assert fake["images_written"] == 4 * 3
    written = sorted((out / "train" / "fake").iterdir())
    assert len(written) == 12 and all(Image.open(p).mode == "RGB" for p in written)
    assert len(list((out / "heldout" / "held").iterdir())) == 4
    assert not (out / "train" / "held").exists()  # the held-out source never reaches training
    assert sum(s["share_of_train"] for s in manifest["sources"]) == pytest.approx(1.0, abs=1e-3)
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["text"] and (out / line["image_path"]).is_file() for line in lines)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    again = build_corpus(out, sources, seed=0)  # the same seed rebuilds the same corpus
    assert again == manifest and sorted((out / "train" / "fake").iterdir()) == written


def test_files_patterns_pick_pictures_by_the_end_of_their_path(tmp_path, fake_pictures):
    sources = [Source("picked", "photo", folder=str(fake_pictures), crops=1, files=("sub/*.png", "gray.png"))]
    manifest = build_corpus(tmp_path / "corpus", sources, seed=0)
    assert manifest["sources"][0]["files_read"] == 2 and manifest["sources"][0]["images_written"] == 2


def test_crops_of_large_pictures_are_never_smaller_than_128_px():
    img = Image.new("RGB", (1000, 400))
    rng = random.Random(0)
    assert all(min(random_crop(img, rng, 0.01).size) >= 128 for _ in range(50))
    assert random_crop(Image.new("RGB", (100, 90)), rng, 0.01).size in {(90, 90), (60, 90), (90, 60)}


def test_emoji_backdrops_are_white_plain_gradient_or_photo(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(photo)
    rng, kinds = random.Random(0), set()
    for _ in range(40):
        pixels = np.asarray(backdrop(64, rng, [photo])).reshape(-1, 3).astype(int)
        assert pixels.shape == (64 * 64, 3)
        distinct = len(np.unique(pixels, axis=0))
        if distinct == 1:
            kinds.add("white" if (pixels == 255).all() else "colour")
        else:
            kinds.add("photo" if distinct > 1000 else "gradient")  # a two-colour ramp has few distinct colours
    assert kinds == {"white", "colour", "gradient", "photo"}
    assert len({backdrop(8, random.Random(1), []).tobytes() for _ in range(3)}) == 1  # seeded


def test_emoji_backdrops_must_be_built_first(tmp_path):
    font_free = Source("emoji", "emoji", folder=str(tmp_path), backdrops=("never-built",))
    with pytest.raises(ValueError, match="build its backdrops"):
        build_corpus(tmp_path / "corpus", [font_free], seed=0)


def test_transparent_pixels_become_the_background():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[3, 3]) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 7)).mode == "RGB"


def test_random_resized_crop_has_the_target_size_and_is_seeded():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8))
    a = random_resized_crop(img, (32, 48), torch.Generator().manual_seed(1))
    b = random_resized_crop(img, (32, 48), torch.Generator().manual_seed(1))
    c = random_resized_crop(img, (32, 48), torch.Generator().manual_seed(2))
    assert a.size == (48, 32) and a.tobytes() == b.tobytes() != c.tobytes()


def test_tokenizer_trains_on_a_folder_of_uncaptioned_images(tmp_path, fake_pictures):
    folder = ImageFolder(fake_pictures)
    assert len(folder) == 5  # the .pk3 is not read here: the corpus command unpacks archives
    task = TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(), str(fake_pictures), 4, 0, OptimConfig())
    cpu = Distributed(0, 1, torch.device("cpu"))
    task.setup(cpu, task.model)
    aspects = set()
    for step in range(4):
        batch = task.source.batch(step, 4, slice(0, 4))
        assert batch.images_B3HW.shape[-2:] == TINY.schedules[batch.aspect_ratio].pixel_hw
        assert torch.equal(batch.images_B3HW, task.source.batch(step, 4, slice(0, 4)).images_B3HW)
        loss, _, n = task.losses(step, cpu)
        assert torch.isfinite(loss) and n == 4
        aspects.add(batch.aspect_ratio)
    assert aspects == set(TINY.schedules)
