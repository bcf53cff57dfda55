"""The self-correction pair the app shows side by side: exported from two matched arms (and refused when they are
not matched), loaded back with the tokenizer it was trained with, both models given the same flipped bits, and a
conclusion that follows the numbers; through the handler and the served app's API."""
import json

import gradio as gr
import numpy as np
import pytest
import torch
from app_helpers import served
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from infinity.app import pair
from infinity.eval import pair as pair_eval
from infinity.app.handlers import Handlers
from infinity.checkpoints import save_model
from infinity.eval.recovery import RecoveryPoint
from infinity.experiments.pair import export_pair
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.__main__ import main as train_cli
from infinity.train.recipes import RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")
HELDOUT = {1: 2, 2: 1}


def _arm(folder, tokenizer, seed, strength):
    flips = ["--self-correction-scales", "2", "--self-correction-strength", str(strength)] if strength else []
    assert train_cli(["transformer", "--recipe", "shapes-tiny", "--tokenizer", str(tokenizer), "--out", str(folder),
                      "--steps", "2", "--batch-size", "2", "--seed", str(seed), "--no-progress", "--threads", "1",
                      "--checkpoint-every", "100", *flips]) == 0
    (folder / "done.json").write_text(json.dumps({"steps": 2, "seconds": 1.5}))
    return folder


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair-arms")
    torch.manual_seed(0)
    tokenizer = save_model(BitwiseTokenizer(RECIPES["shapes-tiny"].tokenizer), root / "tokenizer.safetensors")
    return tokenizer, {name: _arm(root / name, tokenizer, seed, strength)
                       for name, seed, strength in (("without", 0, 0), ("with", 0, 0.5), ("other-seed", 1, 0.5))}


@pytest.fixture(scope="module")
def pair_dir(arms, tmp_path_factory):
    tokenizer, folders = arms
    out = tmp_path_factory.mktemp("pair") / "self-correction"
    export_pair(folders["without"], folders["with"], tokenizer, out, HELDOUT)
    return out


@pytest.fixture(scope="module")
def duo(pair_dir):
    return pair_eval.SelfCorrectionPair.load(pair_dir)


def test_the_exported_pair_records_both_arms_and_stores_fp16(pair_dir, arms):
    info = pair_eval.read_info(pair_dir)
    assert info["models"]["without"]["self_correction_strength"] == 0
    assert info["models"]["with"]["self_correction_strength"] == 0.5 and info["models"]["with"]["steps"] == 2
    assert (pair_dir / info["tokenizer"]).resolve() == arms[0].resolve() and info["heldout"] == {"1": 2, "2": 1}
    from safetensors import safe_open
    with safe_open(pair_dir / "with.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    intro = pair.pair_intro(info)
    assert "flip strength 0.5" in intro and "2 and 2 steps" in intro
    q = info["tokenizer_on_heldout"]
    assert 0 < q["psnr_db"] < 60 and 0 <= q["parser_pass"] <= 1  # a random tokenizer: low, but measured
    assert f"at {q['psnr_db']:.1f} dB" in intro and 1 <= info["default_scene"] <= 3
    assert f"Scene {info['default_scene']} is shown first by a rule" in intro


def test_export_refuses_arms_that_are_not_matched(arms, tmp_path):
    tokenizer, folders = arms
    with pytest.raises(ValueError, match="'seed'"):
        export_pair(folders["without"], folders["other-seed"], tokenizer, tmp_path / "a", HELDOUT)
    with pytest.raises(ValueError, match="strength 0"):
        export_pair(folders["with"], folders["without"], tokenizer, tmp_path / "b", HELDOUT)  # swapped
    with pytest.raises(ValueError, match="not a finished arm"):
        export_pair(tmp_path, folders["with"], tokenizer, tmp_path / "c", HELDOUT)
    other = save_model(BitwiseTokenizer(RECIPES["shapes-tiny"].tokenizer_config(4)), tmp_path / "d4.safetensors")
    with pytest.raises(ValueError, match="not the arms' tokenizer"):
        export_pair(folders["without"], folders["with"], other, tmp_path / "e", HELDOUT)


def test_the_pair_refuses_another_tokenizer_and_a_missing_folder(pair_dir, tmp_path):
    info = pair_eval.read_info(pair_dir)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("without.safetensors", "with.safetensors"):
        (moved / name).write_bytes((pair_dir / name).read_bytes())
    torch.manual_seed(1)
    save_model(BitwiseTokenizer(RECIPES["shapes-tiny"].tokenizer), moved / "tok.safetensors")
    (moved / pair_eval.PAIR_FILE).write_text(json.dumps({**info, "tokenizer": "tok.safetensors"}))
    with pytest.raises(ValueError, match="SHA-256"):
        pair_eval.SelfCorrectionPair.load(moved)
    with pytest.raises(FileNotFoundError, match="no self-correction pair"):
        pair_eval.SelfCorrectionPair.load(tmp_path / "nowhere")
    (moved / pair_eval.PAIR_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        pair_eval.read_info(moved)


def test_both_models_get_the_same_flipped_bits(duo):
    assert set(duo.pipes) == {"without", "with"} and len(duo.scenes) == 3
    assert duo.pipes["with"].tokenizer is duo.pipes["without"].tokenizer
    one = pair_eval.compare_scene(duo, 1, 2, 0.5, seed=3)
    assert set(one.images) == {"scene", pair_eval.CLEAN, pair_eval.NO_CORRECTION, "without", "with"}
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for im in one.images.values())
    assert one.psnr_db[pair_eval.NO_CORRECTION] < 100  # half of scale 2 flipped: the reference is damaged
    again = pair_eval.compare_scene(duo, 1, 2, 0.5, seed=3)
    assert again.psnr_db == one.psnr_db  # the seed fixes flips and sampling
    untouched = pair_eval.compare_scene(duo, 1, 2, 0.0, seed=3)
    assert untouched.psnr_db[pair_eval.NO_CORRECTION] > 100  # nothing flipped: the reference is the clean image
    m = pair_eval.measure(duo, 2, 0.5, count=2, seed=3)
    assert m.scenes == 2 and [pt.p for pt in m.points["with"]] == [0.0, 0.5]
    assert m.points["with"][1].reference_psnr_db == m.points["without"][1].reference_psnr_db  # the same flips


def test_both_models_get_identical_flipped_bits_and_random_streams(duo, monkeypatch):
    """Every sampler call of the pair, recorded per model: the same prefix, the same intervention and the same
    generator state, scene by scene, for both models."""
    from infinity.eval import recovery

    calls = {arm: [] for arm in duo.pipes}
    arm_of = {id(pipe.transformer): arm for arm, pipe in duo.pipes.items()}

    def spy(model, tokenizer, text_BTE, lens_B, schedule, **kw):
        calls[arm_of[id(model)]].append((kw["intervention"], kw["generator"].get_state(), kw["cfg"], kw["tau"],
                                         [b.clone() for b in kw["prefix_bits"]], text_BTE.clone()))
        return real(model, tokenizer, text_BTE, lens_B, schedule, **kw)

    real = recovery.sample_scales
    monkeypatch.setattr(recovery, "sample_scales", spy)
    pair_eval.compare_scene(duo, 1, 2, 0.5, seed=3)
    pair_eval.measure(duo, 2, 0.5, count=3, seed=4)
    assert len(calls["with"]) == len(calls["without"]) == 3  # one scene; then p = 0 and p = 0.5 on one batch
    for a, b in zip(calls["with"], calls["without"]):
        assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2:4] == b[2:4]
        assert all(torch.equal(x, y) for x, y in zip(a[4], b[4])) and torch.equal(a[5], b[5])


def _measured(with_db, without_db, with_scenes=(), without_scenes=()):
    def points(db, per_scene):
        return (RecoveryPoint(2, 0.0, 4, 30.0, 1.0, 200.0, 1.0),
                RecoveryPoint(2, 0.2, 4, db, 0.5, 15.0, 0.25, tuple(per_scene) or (db,) * 4))
    return pair_eval.Measured(2, 0.2, 4, {"with": points(with_db, with_scenes),
                                          "without": points(without_db, without_scenes)})


def test_the_conclusion_follows_the_numbers(duo):
    helped = pair.comparison_text(duo, _measured(22.0, 20.0))
    assert "came back closer to the clean reconstruction, by 2.00 dB" in helped and "**22.00 dB**" in helped
    assert "cost it 8.00 dB" in helped and "(nothing sampled, nothing corrected): 15.00 dB" in helped
    assert "the parser reads 100% of the clean reconstructions" in helped
    assert "did not help" in pair.comparison_text(duo, _measured(20.0, 21.0))
    assert "no measurable effect" in pair.comparison_text(duo, _measured(20.0, 20.05))
    # the means and the count of scenes each model wins can disagree: both are shown
    split = pair.comparison_text(duo, _measured(21.0, 20.0, (30, 18, 18, 18), (19, 20.5, 20.5, 20.05)))
    assert "1 of 4 came back closer with self-correction, 3 without, 0 within 0.1 dB" in split
    assert "0 of 4 came back closer with self-correction, 0 without, 4 within" in pair.comparison_text(
        duo, _measured(20.0, 20.05))


def test_the_handler_answers_bad_input_and_a_missing_pair(app_pipe, pair_dir, tmp_path):
    h = Handlers(app_pipe, pair_slot=pair.PairSlot(pair_dir))
    sheet, text = h.self_correction_pair(2, 1, 0.3, 0, 3)
    assert isinstance(sheet, Image.Image) and "Over 3 held-out scenes, 30% of scale 1's bits flipped" in text
    for bad, match in (((0, 1, 0.3, 0, 3), "scene"), ((1, 4, 0.3, 0, 3), "scale"), ((1, 1, 1.5, 0, 3), "fraction"),
                       ((1, 1, 0.3, -1, 3), "seed"), ((1, 1, 0.3, 0, 9), "scenes measured")):
        with pytest.raises(gr.Error, match=match):
            h.self_correction_pair(*bad)
    missing = Handlers(app_pipe, pair_slot=pair.PairSlot(tmp_path / "none"))
    with pytest.raises(gr.Error, match="pair is not available"):
        missing.self_correction_pair(1, 1, 0.3, 0, 1)


def test_the_served_app_compares_the_pair(app_pipe, pair_dir):
    with served(app_pipe, pair_dir=pair_dir) as url:
        client = Client(url, verbose=False)
        sheet, text = client.predict(1, 2, 0.25, 5, 2, api_name="/self_correction_pair")
        assert np.asarray(Image.open(sheet)).std() > 0 and "trained with self-correction (flip strength 0.5)" in text
        with pytest.raises(AppError, match="scale"):
            client.predict(1, 9, 0.25, 5, 2, api_name="/self_correction_pair")


def test_the_app_serves_without_a_pair(app_pipe, tmp_path):
    with served(app_pipe, pair_dir=tmp_path / "no-pair") as url:
        with pytest.raises(AppError, match="pair is not available"):
            Client(url, verbose=False).predict(1, 1, 0.25, 0, 1, api_name="/self_correction_pair")
