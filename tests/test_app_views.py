"""The app's pure views, its input checks and the explorer's computations, without a server (tiny model, CPU)."""
import json
import math
import types

import numpy as np
import pytest
import torch
from app_helpers import bad_image_files
from PIL import Image

from infinity.app import explorer, inputs, runtime, sheets, views, vocabulary
from infinity.app.tokenizers import model_codec
from infinity.sampling import Intervention

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- views ----


def test_colormap_runs_dark_to_bright_and_clips():
    colours = views.colormap(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]]))
    assert colours.shape == (1, 6, 3) and colours.dtype == np.uint8
    brightness = colours[0].astype(int).sum(-1)
    assert brightness[0] == brightness[1] == brightness[5] and brightness[3] == brightness[4]
    assert brightness[1] < brightness[2] < brightness[3]


def test_enlarge_uses_square_pixels_and_leaves_large_images():
    small = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4).repeat(3).reshape(3, 4, 3))
    big = views.enlarge(small, min_side=256)
    assert big.size == (4 * 86, 3 * 86)  # ceil(256 / 3) = 86
    assert np.array_equal(np.asarray(big)[::86, ::86], np.asarray(small))  # nearest: every cell kept exactly
    large = Image.new("RGB", (300, 400))
    assert views.enlarge(large) is large


def test_token_entropy_is_zero_when_sure_and_one_for_coin_flips():
    probs = torch.tensor([0.0, 1.0, 0.5, 0.5]).view(1, 2, 2, 1).repeat(1, 1, 1, 8)  # (B, h, w, d)
    entropy = views.token_entropy(probs)
    assert entropy.shape == (2, 2)
    assert np.allclose(entropy, [[0, 0], [1, 1]], atol=1e-4)


def test_entropy_overlay_has_one_square_per_token():
    image = Image.new("RGB", (32, 16), (0, 0, 0))
    entropy = np.array([[0.0, 1.0], [1.0, 0.0]])
    overlay = np.asarray(views.entropy_overlay(entropy, image, alpha=1.0))
    assert overlay.shape == (16, 32, 3)
    assert (overlay[:8, :16] == overlay[0, 0]).all() and (overlay[:8, 16:] == overlay[0, 16]).all()
    assert overlay[0, 16].sum() > overlay[0, 0].sum()


def test_bits_image_maps_all_zeros_to_black_and_all_ones_to_white():
    bits = torch.zeros(1, 2, 1, 9, dtype=torch.uint8)
    bits[0, 1] = 1
    img = np.asarray(views.bits_image(bits, size=(4, 8)))
    assert img.shape == (8, 4, 3)
    assert (img[:4] == 0).all() and (img[4:] == 255).all()


def test_residual_image_is_grey_where_nothing_changed():
    before = Image.new("RGB", (4, 4), (100, 100, 100))
    after = before.copy()
    after.putpixel((0, 0), (200, 100, 0))
    residual, peak = views.residual_image(before, after)
    r = np.asarray(residual)
    assert peak == 100 and tuple(r[0, 0]) == (255, 128, 0) and (r[1:] == 128).all()
    _, from_black = views.residual_image(None, after)
    assert from_black == 200


def test_difference_map():
    a = Image.new("RGB", (8, 8), (10, 20, 30))
    same, mean = views.difference_map(a, a.copy())
    assert mean == 0 and (np.asarray(same) == views.colormap(np.zeros((1, 1)))).all()
    b = Image.new("RGB", (8, 8), (20, 20, 30))
    _, mean = views.difference_map(a, b)
    assert mean == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="differ in size"):
        views.difference_map(a, Image.new("RGB", (4, 4)))


def test_difference_map_has_a_fixed_scale():
    a = Image.new("RGB", (2, 1), (100, 100, 100))
    b = Image.fromarray(np.array([[[101, 100, 100], [200, 200, 200]]], dtype=np.uint8))
    shown = np.asarray(views.difference_map(a, b)[0]).astype(int).sum(-1)
    black, full = views.colormap(np.zeros(1)).astype(int).sum(), views.colormap(np.ones(1)).astype(int).sum()
    assert shown[0, 0] - black < 10 and shown[0, 1] == full  # a 1/3 difference stays dark; 100 is full scale


@pytest.mark.parametrize("image_hw", [(32, 32), (16, 24), (24, 16), (1024, 1536)])
def test_contact_sheet_tiles_keep_the_aspect_ratio(image_hw):
    H, W = image_hw
    tiles = [Image.new("RGB", (W, H), (k * 30, 0, 0)) for k in range(3)]
    labels = [f"scale {k + 1}" for k in range(9)]
    lay = sheets.layout(image_hw, 9, 2)
    sheet = sheets.contact_sheet([tiles, tiles[:1]], [labels, labels], image_hw)
    assert sheet.size == lay.size and lay.columns == 5  # 9 tiles wrap into rows of 5 and 4
    for row, count in ((0, 3), (1, 1)):
        for i in range(9):
            x0, y0, x1, y1 = lay.box(row, i)
            assert abs((x1 - x0) / (y1 - y0) - W / H) < 0.01
            pixel = sheet.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
            assert pixel == ((i * 30, 0, 0) if i < count else sheets.BACKGROUND)  # empty frames until computed
    with pytest.raises(ValueError, match="more than its 9 labels"):
        sheets.contact_sheet([tiles * 4], [labels], image_hw)


def test_a_sheet_row_holds_the_input_and_seven_scales_and_wraps_evenly():
    assert sheets.layout((128, 128), 8).rows_per_series == 1  # the result beside the input, not alone below it
    assert sheets.layout((1024, 1024), 14).columns == 7  # the input and 13 scales: two rows of 7
    wide = sheets.layout((128, 192), 8)  # 3:2 tiles are wider: fewer per row, rows of equal length
    assert (wide.columns, wide.rows_per_series) == (4, 2) and wide.size[0] <= sheets.layout((128, 128), 8).size[0]
    assert min(sheets.layout((192, 128), 1).tile) == sheets.TILE_SIDE  # 2:3 tiles as wide as square ones


def test_labels_wrap_between_parts_then_words():
    font = sheets._font(sheets.LABEL_FONT_SIZE)
    assert sheets.wrap("scale 7: 16x16 · 28.4 dB", font, 160) == ["scale 7: 16x16", "28.4 dB"]
    assert sheets.wrap("scale 7: 16x16 · 28.4 dB", font, 400) == ["scale 7: 16x16 · 28.4 dB"]
    assert sheets.wrap("input · resized, cropped", font, 160) == ["input", "resized, cropped"]
    assert sheets.wrap("a b", font, 1) == ["a", "b"]  # a word wider than the tile keeps a line of its own
    with pytest.raises(ValueError, match="needs 3 lines"):
        sheets.contact_sheet([[]], [[" · ".join(["scale 7: 16x16"] * 3)]], (2, 2))


def test_an_uploads_layout_needs_the_scales_that_make_half_its_psnr_gain():
    assert explorer.layout_scales([12.8, 13.5, 14.2, 14.6, 16.7, 22.3, 28.4]) == 6  # the example scene, embedded
    assert explorer.layout_scales([10.0, 20.0, 21.0, 22.0]) == 2
    assert explorer.layout_scales([10.0, 10.0, 10.0]) == 1 and explorer.layout_scales([10.0, 9.0]) == 1


def test_series_colors_follow_the_order_of_every_series():
    order = ["own", "d8", "d16"]
    assert views.series_colors(["d16"], order) == {"d16": views.SERIES_COLORS[2]}
    assert views.series_colors(order, order)["own"] == views.SERIES_COLORS[0]


# ---- vocabulary ----


def test_unknown_words_are_named_once_in_prompt_order():
    assert vocabulary.unknown_words("A large green triangle at the bottom.") == []
    assert vocabulary.unknown_words("a cat sitting on a sofa, a cat") == ["cat", "sitting", "sofa"]
    assert "'cat', 'sitting', 'sofa'" in vocabulary.notice("a cat sitting on a sofa")
    assert vocabulary.notice("a small red circle on a white background") == ""
    plural = vocabulary.notice("two green triangles")  # counts and plurals: told how to ask for several objects
    assert "'two', 'triangles'" in plural and vocabulary.SEVERAL_EXAMPLE in plural
    assert vocabulary.SEVERAL_EXAMPLE in vocabulary.can_draw()
    assert vocabulary.unknown_words(vocabulary.SEVERAL_EXAMPLE) == []  # the advice is itself a caption the model knows


def _evaluation(step: int, shipped: bool, adherence: tuple[float, float, float], weights: str = "fp16") -> dict:
    return {"run": "embedded-transformer", "kind": "evaluation", "step": step, "weights": weights, "shipped": shipped,
            "adherence": dict(zip("123", adherence)), "scenes": [31, 20, 20], "open_prompts": 6,
            "prompts_over_spread_target": 3}


def test_the_banner_says_how_often_the_shipped_embedded_model_is_right(tmp_path):
    line = vocabulary.how_often(_evaluation(0, False, (0.839, 0.05, 0.0)))
    assert "one object in 26 of 31, two objects in 1 of 20, three objects in 0 of 20" in line
    assert "3 of 6 prompts that leave the background open" in line
    assert runtime.measured(None, tmp_path) == ""  # no ledger in this checkout: no line
    ledger = tmp_path / "benchmarks" / "results" / "ledger_embedded.jsonl"
    ledger.parent.mkdir(parents=True)
    rows = [_evaluation(0, False, (0.839, 0.05, 0.0), weights="shipped"), _evaluation(100, True, (0.9, 0.6, 0.35)),
            _evaluation(200, False, (0.1, 0.0, 0.0))]
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = runtime.measured(None, tmp_path)  # the last evaluation that shipped, not the latest one
    assert "one object in 28 of 31, two objects in 12 of 20, three objects in 7 of 20" in line
    assert runtime.measured("runs/some-folder", tmp_path) == ""  # another model: the ledger is not about it


def test_shapes_models_are_told_by_their_examples(app_pipe):
    assert not vocabulary.is_shapes_model(app_pipe)  # "a red cube": not a shapes caption
    shapes = types.SimpleNamespace(examples=("a large green triangle at the bottom",))
    assert vocabulary.is_shapes_model(shapes) and not vocabulary.is_shapes_model(types.SimpleNamespace(examples=()))


def test_per_scale_table_is_long_form():
    table = views.per_scale_table({"a": [1.0, 2.0], "b": [3.0, 4.0]}, "PSNR (dB)")
    assert list(table.columns) == ["scale", "PSNR (dB)", "series"]
    assert table.values.tolist() == [["1", 1.0, "a"], ["2", 2.0, "a"], ["1", 3.0, "b"], ["2", 4.0, "b"]]
    assert views.scale_labels(3) == ["1", "2", "3"]


# ---- inputs ----


@pytest.mark.parametrize(
    "check, value, message",
    [
        (lambda v: inputs.prompt_text(v), "", "Please enter a prompt: it is empty."),
        (lambda v: inputs.prompt_text(v), "   ", "Please enter a prompt"),
        (lambda v: inputs.prompt_text(v), None, "The prompt must be text, got NoneType."),
        (lambda v: inputs.prompt_text(v), "x" * 10_000, "The prompt is 10,000 characters long; at most 2,000"),
        (lambda v: inputs.number("CFG", v, 0, 30), math.nan, "CFG must be a finite number, got nan."),
        (lambda v: inputs.number("CFG", v, 0, 30), -1, "CFG must be >= 0, got -1."),
        (lambda v: inputs.number("CFG", v, 0, 30), "3", "CFG must be a number, got '3'."),
        (lambda v: inputs.number("tau", v, 0, 5, low_open=True), 0, "tau must be > 0, got 0."),
        (lambda v: inputs.seed(v), -1, "seed must be between 0 and 9,007,199,254,740,991, got -1."),
        (lambda v: inputs.seed(v), 2**63, "seed must be between 0 and 9,007,199,254,740,991"),
        (lambda v: inputs.seed(v), 1.5, "seed must be a whole number, got 1.5."),
        (lambda v: inputs.seed(v), math.inf, "seed must be a whole number"),
        (lambda v: inputs.seed(v), True, "seed must be a whole number, got True."),
        (lambda v: inputs.flag("randomize seed", v), "yes", "randomize seed must be true or false"),
        (lambda v: inputs.choice("aspect ratio", v, ["1:1"]), "16:9", "aspect ratio must be one of 1:1; got '16:9'."),
        (lambda v: inputs.read_image(v), None, "Please upload an image first."),
        (lambda v: inputs.read_image(v), "/no/such/file.png", "The uploaded file is gone from the server"),
    ],
)
def test_inputs_refuse_bad_values_with_a_sentence(check, value, message):
    with pytest.raises(ValueError) as e:
        check(value)
    assert message in str(e.value)


def test_inputs_accept_good_values():
    assert inputs.prompt_text("🦊 in the snow") == "🦊 in the snow"
    assert inputs.prompt_text(None, required=False) == ""
    assert inputs.seed(3.0) == 3 and isinstance(inputs.seed(3.0), int) and inputs.seed(2**53 - 1) == 2**53 - 1
    assert inputs.number("tau", 0.5, 0, 5, low_open=True) == 0.5


@pytest.mark.parametrize(
    "name, message",
    [
        ("random bytes", "The uploaded file is not a readable image (cannot identify image file)."),
        ("truncated", "The uploaded file is not a readable image"),
        ("too large", "The image is 8,000 x 8,000 pixels; at most 40 megapixels are accepted."),
        ("decompression bomb", "The image declares a huge size (a decompression bomb?)"),
    ],
)
def test_bad_uploads_are_refused_before_decoding(tmp_path, name, message):
    path = bad_image_files(tmp_path)[name]
    for payload in (str(path), {"path": str(path), "orig_name": "x.png"}):
        with pytest.raises(ValueError) as e:
            inputs.read_image(payload)
        assert message in str(e.value) and str(tmp_path) not in str(e.value)


def test_uploads_are_read_as_rgb(tmp_path):
    Image.new("RGBA", (5, 3), (1, 2, 3, 4)).save(tmp_path / "a.png")
    img = inputs.read_image({"path": str(tmp_path / "a.png")})
    assert img.mode == "RGB" and img.size == (5, 3)


# ---- explorer ----


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


def test_nearest_aspect_ratio(app_pipe):
    assert explorer.nearest_aspect_ratio(app_pipe, Image.new("RGB", (60, 40))) == "3:2"
    assert explorer.nearest_aspect_ratio(app_pipe, Image.new("RGB", (40, 61))) == "2:3"
    assert explorer.nearest_aspect_ratio(app_pipe, Image.new("RGB", (50, 50))) == "1:1"


def test_previews_are_decoded_at_the_scale_grid_and_enlarged_with_nearest(app_pipe):
    events = list(app_pipe.stream("a red cube", seed=1, preview=False))
    previews = [explorer.scale_preview(app_pipe, e) for e in events]
    H, W = app_pipe.schedule("1:1").pixel_hw
    assert all(p.size == (W, H) for p in previews)
    first = np.asarray(previews[0])  # 1x1 tokens: decoded at 2x2 cells (8x8 px), enlarged 4x to 32x32 px
    assert (first[:4, :4] == first[0, 0]).all() and np.array_equal(first, first[::4, ::4].repeat(4, 0).repeat(4, 1))
    assert np.array_equal(np.asarray(previews[-1]), np.asarray(app_pipe("a red cube", seed=1).image))


def test_grids_of_previews():
    assert explorer.preview_grid((1, 1), (64, 64)) == (2, 2)  # at least 2x2
    assert explorer.preview_grid((48, 32), (64, 64)) == (32, 32)  # at most half
    assert explorer.preview_grid((1, 1), (2, 2)) == (2, 2)


def test_reconstruction_psnr_per_scale(app_pipe, photo):
    fitted, rec = explorer.reconstruct(model_codec(app_pipe), photo, "3:2")
    assert fitted.size == (24, 16) and len(rec.images) == len(rec.psnr) == 3
    assert all(im.size == (24, 16) for im in rec.images) and all(math.isfinite(p) for p in rec.psnr)


def test_flip_masks_count_and_determinism():
    shapes = [torch.Size((1, 2, 2, 8)), torch.Size((1, 4, 4, 8)), torch.Size((1, 8, 8, 8))]
    masks = explorer.flip_masks(shapes, 2, 0.25, seed=3)
    assert [int(m.sum()) for m in masks[:2]] == [8, 32] and masks[2] is None
    again = explorer.flip_masks(shapes, 2, 0.25, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(masks[:2], again[:2]))


def test_self_correction_series(app_pipe, photo):
    codec = model_codec(app_pipe)
    none = explorer.tokenizer_self_correction(codec, photo, "1:1", 2, 0.0, seed=0)
    clean = none.series[explorer.CLEAN]
    assert none.series[explorer.REQUANTIZED].psnr_input == clean.psnr_input and none.flipped == [0, 0, 0, 0]
    # nothing flipped: the clean features (a random tokenizer's decoder amplifies float noise where F ~ 0, so images
    # are compared at the last scale only)
    assert none.series[explorer.PLAIN_FLIPS].feature_error == pytest.approx(clean.feature_error, abs=1e-6)
    assert none.series[explorer.PLAIN_FLIPS].psnr_clean[-1] > 60

    result = explorer.tokenizer_self_correction(codec, photo, "1:1", 2, 0.5, seed=0)
    assert result.flipped == [round(0.5 * 8), round(0.5 * 4 * 8), 0, 0]  # scales 1x1 and 2x2 (8 bits)
    assert result.series[explorer.CLEAN].psnr_input == pytest.approx(clean.psnr_input)
    plain, requantized = result.series[explorer.PLAIN_FLIPS], result.series[explorer.REQUANTIZED]
    # Both flip the same bits, so they agree at the first scale; after the flipped scales only re-quantization
    # recomputes the residuals, so they differ there.
    assert plain.psnr_input[0] == pytest.approx(requantized.psnr_input[0])
    assert plain.psnr_clean[0] == pytest.approx(requantized.psnr_clean[0]) and plain.psnr_clean[0] < 99
    assert plain.feature_error[3] != pytest.approx(requantized.feature_error[3])
    assert all(0 <= e for s in result.series.values() for e in s.feature_error)


def _result(plain: tuple[float, float], requantized: tuple[float, float]) -> explorer.SelfCorrectionResult:
    """A result whose last scale has (PSNR vs clean, feature error) as given for the two flipped series."""
    def series(psnr_clean, error):
        return explorer.Series([], [20.0], [psnr_clean], [error])

    return explorer.SelfCorrectionResult(None, {explorer.CLEAN: series(99.0, 0.1), explorer.PLAIN_FLIPS: series(*plain),
                                                explorer.REQUANTIZED: series(*requantized)}, [1])


@pytest.mark.parametrize(
    "plain, requantized, expected",
    [
        ((20.0, 0.5), (30.0, 0.3), (1, 1)),  # re-quantization closer on both measures
        ((30.0, 0.3), (20.0, 0.5), (-1, -1)),  # worse on both
        ((25.0, 0.4), (25.0, 0.4), (0, 0)),  # the same
        ((20.0, 0.3), (30.0, 0.5), (1, -1)),  # the measures disagree
    ],
)
def test_verdict_follows_the_numbers(plain, requantized, expected):
    v = explorer.verdict(_result(plain, requantized))
    assert (v.psnr_clean, v.feature_error) == expected
    helped, hurt = v.text.startswith("Re-quantization helped"), "did not help" in v.text
    assert helped == (expected == (1, 1)) and hurt == (expected == (-1, -1))
    # the numbers are in the sentence, in the order the verdict compares them
    assert f"{requantized[0]:.2f} dB" in v.text and f"{plain[0]:.2f} dB" in v.text


def test_generation_intervention_against_the_clean_run(app_pipe):
    result = explorer.generation_intervention(app_pipe, "a red cube", 4, Intervention(1, 0.5, 4), aspect_ratio="1:1")
    assert result.bits_changed[0] == 0 and result.bits_changed[1] == pytest.approx(0.5)
    assert result.flipped_bits == 16 and len(result.clean) == len(result.flipped) == 4
    assert np.array_equal(np.asarray(result.clean[-1]), np.asarray(app_pipe("a red cube", seed=4).image))
    nothing = explorer.generation_intervention(app_pipe, "a red cube", 4, Intervention(1, 0.0, 4))
    assert nothing.bits_changed == [0.0] * 4


def test_variations_keep_the_prefix(app_pipe):
    out = app_pipe("a red cube", seed=2)
    images = list(explorer.variations(app_pipe, out.bits[:4], "a red cube", [2, 3]))
    assert np.array_equal(np.asarray(images[0]), np.asarray(out.image))  # every scale kept: the same image
    images = list(explorer.variations(app_pipe, out.bits[:1], "a red cube", [5, 6]))
    assert len(images) == 2 and not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_the_spread_of_variations_is_measured_and_named():
    black, gray = Image.new("RGB", (4, 4), (0, 0, 0)), Image.new("RGB", (4, 4), (30, 30, 30))
    assert views.spread([black]) == ""  # one image: nothing to compare
    alike = views.spread([black, black])
    assert "by 0.0/255" in alike and "look alike" in alike
    # pairs (black, gray) twice and (gray, gray) once: (30 + 30 + 0) / 3 = 20
    apart = views.spread([black, gray, gray])
    assert "by 20.0/255" in apart and "look alike" not in apart
