"""The app's callbacks called directly (every bad input a gr.Error with a message), its serving helpers and its
command line. The same callbacks served over HTTP: test_app_api.py; in a browser: test_app_browser.py."""
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from app_helpers import bad_image_files, write_tokenizer_files
from PIL import Image

import app
from infinity.app import explorer, runtime, sheets, views
from infinity.app.handlers import ALL_TOKENIZERS, Generation, Handlers, user_errors
from infinity.app.tokenizers import BEST, MODEL_OWN, Codec, TokenizerShelf
from infinity.eval.diversity import mean_pixel_difference
from infinity.pipeline import InfinityPipeline
from infinity.schedules import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "assets" / "examples" / "shapes.png")
SCENE = str(ROOT / "assets" / "examples" / "scene.png")
GENERATE = dict(negative_prompt="", aspect_ratio="1:1", cfg=3.0, seed=7, randomize_seed=False, tau=1.0, top_k=0,
                top_p=0.0)


@pytest.fixture(scope="module")
def handlers(app_pipe):
    return Handlers(app_pipe)


@pytest.fixture(scope="module")
def embedded() -> Handlers:
    """The app's callbacks on the embedded model (trained on shapes scenes; about 0.2 s per image here)."""
    return Handlers(InfinityPipeline.from_pretrained(None, device="cpu"))


@pytest.fixture(scope="module")
def shelf_dir(tmp_path_factory):
    return write_tokenizer_files(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def record(handlers) -> Generation:
    *_, last = handlers.generate("a red cube", **GENERATE)
    return last[-1]


def message(call) -> str:
    """The gr.Error message of a callback call (generators are run to the end)."""
    with pytest.raises(gr.Error) as e:
        result = call()
        if isinstance(result, types.GeneratorType):
            list(result)
    return e.value.message


def test_generate_streams_each_scale_then_the_image(handlers, app_pipe):
    updates = list(handlers.generate("a red cube", **GENERATE))
    assert len(updates) == 5  # 4 scales, then the final image
    sizes = {Image.open(sheet).size for sheet, *_ in updates}
    assert len(sizes) == 1  # the previews keep their layout from the first scale to the end
    for k, (sheet, image, status, seed, state) in enumerate(updates[:4]):
        assert image is None and status.startswith(f"Scale {k + 1}/4") and seed == 7
        assert state == gr.skip()  # the session's last Generation is replaced only once this one is done
    sheet, image, status, seed, state = updates[-1]
    assert isinstance(state, Generation) and "seed **7**" in status and "vocabulary" not in status
    assert np.array_equal(np.asarray(image), np.asarray(app_pipe("a red cube", seed=7).image))
    assert [tuple(b.shape) for b in state.bits] == [(1, 1, 1, 8), (1, 2, 2, 8), (1, 4, 4, 8), (1, 8, 8, 8)]


def test_randomized_seed_is_reported(handlers):
    *_, (_, _, status, seed, state) = handlers.generate("a red cube", **{**GENERATE, "randomize_seed": True})
    assert state.seed == seed and f"seed **{seed}**" in status


@pytest.mark.parametrize(
    "change, text",
    [
        ({"prompt": ""}, "Please enter a prompt"),
        ({"prompt": "x" * 10_000}, "The prompt is 10,000 characters long"),
        ({"negative_prompt": "x" * 10_000}, "The negative prompt is 10,000 characters long"),
        ({"cfg": math.nan}, "CFG must be a finite number, got nan."),
        ({"cfg": -1.0}, "CFG must be >= 0, got -1."),
        ({"tau": 0}, "tau must be > 0"),
        ({"top_k": -2}, "top-k must be between 0"),
        ({"top_p": 2}, "top-p must be <= 1"),
        ({"seed": 2**64}, "seed must be between 0 and 9,007,199,254,740,991"),
        ({"seed": -1}, "seed must be between 0"),
        ({"seed": "12"}, "seed must be a whole number, got '12'."),
        ({"aspect_ratio": "16:9"}, "aspect ratio must be one of 1:1, 3:2, 2:3; got '16:9'."),
        ({"randomize_seed": None}, "randomize seed must be true or false"),
    ],
)
def test_generate_refuses_bad_input_with_a_message(handlers, change, text):
    kwargs = {"prompt": "a red cube", **GENERATE, **change}
    assert text in message(lambda: handlers.generate(**kwargs))


def test_emoji_prompts_generate(handlers):
    *_, (_, image, status, _, _) = handlers.generate("🦊🔥 ✨", **GENERATE)
    assert image.size == (32, 32) and status.startswith("Done")


def test_inside_each_scale(handlers, record):
    bits, added, overlay, text = handlers.inspect_scale(2, record)
    assert bits.size == added.size == overlay.size == (256, 256)  # 32 px, shown 8x with square pixels
    assert text.startswith("**Scale 2/4**: 2x2 tokens x 8 bits")
    assert "Generate an image first" in message(lambda: handlers.inspect_scale(1, None))
    assert "scale must be between 1 and 4, got 5." in message(lambda: handlers.inspect_scale(5, record))


def test_tokenizer_and_self_correction(handlers):
    sheet, table, text = handlers.tokenize({"path": EXAMPLE}, "auto", MODEL_OWN)
    assert len(table) == 3  # 384x256 -> 3:2, 3 scales
    assert text.startswith(f"{MODEL_OWN} (8 bits per token): aspect ratio 3:2 (24x16 px), 3 scales")
    sheet, table, text = handlers.self_correction_tokenizer(EXAMPLE, "1:1", 2, 0.3, 0, MODEL_OWN)
    assert len(table) == 12  # 3 series x 4 scales
    assert f"Tokenizer: {MODEL_OWN}. Flipped 12 bits (30%) in scales 1-2 of 4" in text  # round(.3*8) + round(.3*32)
    assert_conclusion_follows_the_numbers(text)
    clean, flipped, diff, table, text = handlers.self_correction_generation("a red cube", "1:1", 3, 2, 0.5)
    assert clean.size == flipped.size == diff.size == (256, 256) and len(table) == 4
    assert text.startswith("Flipped 16 bits (50%) of scale 2/4, seed 3.")


def printed_numbers(text: str) -> dict[str, tuple[float, ...]]:
    """The table the self-correction explorer prints: series -> (PSNR vs input, PSNR vs clean or nan, error)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] in explorer.SERIES_NAMES:
            rows[cells[0]] = tuple(float("nan") if c == "-" else float(c.split()[0]) for c in cells[1:])
    assert set(rows) == set(explorer.SERIES_NAMES), text
    return rows


def assert_conclusion_follows_the_numbers(text: str) -> None:
    numbers = printed_numbers(text)
    (_, plain_clean, plain_error), (_, requant_clean, requant_error) = (
        numbers[explorer.PLAIN_FLIPS], numbers[explorer.REQUANTIZED])
    helped, hurt = "Re-quantization helped" in text, "did not help" in text
    if requant_clean > plain_clean + 0.05 and requant_error < plain_error - 0.001:
        assert helped and not hurt, text
    elif requant_clean < plain_clean - 0.05 and requant_error > plain_error + 0.001:
        assert hurt and not helped, text
    else:
        assert not helped and not hurt, text


def test_self_correction_conclusion_on_a_shapes_scene(embedded):
    """On a scene the embedded tokenizer reconstructs well, at the app's defaults, re-quantization helps; the
    printed conclusion says so because the printed numbers say so."""
    sheet, table, text = embedded.self_correction_tokenizer(SCENE, "auto", 2, 0.3, 0, MODEL_OWN)
    assert_conclusion_follows_the_numbers(text)
    assert "Re-quantization helped" in text


def test_self_correction_conclusion_when_requantization_loses(handlers, monkeypatch):
    """A forced result where the re-quantized series is further from the clean one: the page says so."""
    def series(psnr_clean, error):
        return explorer.Series([None] * 4, [12.0] * 4, [psnr_clean] * 4, [error] * 4)

    forced = explorer.SelfCorrectionResult(None, {
        explorer.CLEAN: series(99.0, 0.1), explorer.PLAIN_FLIPS: series(31.0, 0.2),
        explorer.REQUANTIZED: series(24.0, 0.35)}, [12, 0, 0, 0])
    monkeypatch.setattr(explorer, "tokenizer_self_correction", lambda *args: forced)
    sheet, table, text = handlers.self_correction_tokenizer(EXAMPLE, "1:1", 2, 0.3, 0, MODEL_OWN)
    assert_conclusion_follows_the_numbers(text)
    assert "did not help" in text


def test_unknown_words_get_a_notice_on_the_embedded_model_only(embedded, handlers):
    *_, (_, image, status, _, _) = embedded.generate("a cat sitting on a large red square", **GENERATE)
    assert image is not None and "'cat', 'sitting'" in status and "'large'" not in status
    *_, (_, _, status, _, _) = embedded.generate("a large red square on the left", **GENERATE)
    assert "vocabulary" not in status
    *_, (_, _, status, _, _) = handlers.generate("a cat sitting on a sofa", **GENERATE)  # not a shapes model
    assert "vocabulary" not in status


def test_seeds_give_visibly_different_images_on_the_embedded_model(embedded):
    """At the embedded model's defaults, a prompt that leaves the background open varies with the seed (its
    background: gray or black; at tau 0.25, the old default, every seed gave the same image, 0.3/255 apart)."""
    d = embedded.pipe.defaults
    options = dict(GENERATE, cfg=d.cfg, tau=d.tau, top_k=d.top_k, top_p=d.top_p)
    images = []
    for seed in range(4):
        *_, (_, image, _, _, _) = embedded.generate("a large green circle at the top", **{**options, "seed": seed})
        images.append(np.asarray(image))
    assert mean_pixel_difference(images) > 20  # of 255: backgrounds differ between seeds


def test_tokenizer_choice_reaches_both_tabs(app_pipe, shelf_dir, monkeypatch):
    shelf = TokenizerShelf(app_pipe, shelf_dir)
    assert shelf.choices == [MODEL_OWN, "general-d8", "general-d16"]  # notes.safetensors left out
    # the tiny model makes 32 px images, the files encode 128 px: PSNRs would not compare, so no BEST
    assert not shelf.comparable and shelf.default == MODEL_OWN and BEST not in shelf.options
    h = Handlers(app_pipe, shelf)
    sheet, table, text = h.tokenize({"path": EXAMPLE}, "auto", ALL_TOKENIZERS)
    assert set(table["series"]) == set(shelf.choices) and len(text.split("\n\n")) == 3
    assert "general-d16 (16 bits per token): aspect ratio 3:2 (96x64 px), 7 scales" in text
    assert sheet.size == sheets.layout((16, 24), 8, 3, titled=True).size  # a row per tokenizer
    sheet, table, text = h.self_correction_tokenizer(EXAMPLE, "auto", 2, 0.3, 0, "general-d8")
    assert text.startswith("Tokenizer: general-d8. Flipped") and len(table) == 3 * 7
    assert_conclusion_follows_the_numbers(text)
    monkeypatch.setattr(app_pipe, "name", "infinity-2b")
    released = TokenizerShelf(app_pipe, shelf_dir)
    assert released.default == MODEL_OWN and BEST not in released.options  # a released model keeps its own
    with pytest.raises(ValueError, match="different sizes"):  # a codec against one at another size
        small = shelf.get("general-d8")
        explorer.best_codec([small, Codec("other", small.tokenizer, {
            "1:1": Schedule(small.schedules["1:1"].scales, 2 * small.schedules["1:1"].patch_size)})],
            Image.open(EXAMPLE), "1:1")
    assert TokenizerShelf(app_pipe, shelf_dir / "missing").choices == [MODEL_OWN]


def test_the_tokenizer_plot_colours_the_series_it_shows_in_a_fixed_order(app_pipe, shelf_dir):
    h = Handlers(app_pipe, TokenizerShelf(app_pipe, shelf_dir))
    plot = {"columns": ["scale", "PSNR (dB)", "series"],
            "data": [["1", 9.0, "general-d16"], ["1", 8.0, MODEL_OWN]]}
    colors = h.plot_colors(plot).color_map
    assert list(colors) == [MODEL_OWN, "general-d16"] and colors["general-d16"] == views.SERIES_COLORS[2]


def test_an_upload_becomes_the_variations_source_with_the_scales_of_its_layout(embedded):
    source, keep = embedded.upload_layout({"path": SCENE}, "auto")
    K = embedded.pipe.schedule("1:1").num_scales
    assert source == "uploaded image" and 1 <= keep.value < K
    sheet, status = list(embedded.variations(source, SCENE, "auto", keep.value, 1, "a small blue square", 0, False,
                                             None))[-1]
    assert status.startswith(f"Done: 1 variation of scales {keep.value + 1}-{K}")


def test_the_best_tokenizer_on_an_image_is_the_one_with_the_highest_psnr(embedded):
    """The embedded model and the shipped general tokenizers encode at the same sizes: the default compares them."""
    shelf = embedded.tokenizers
    assert shelf.comparable and shelf.default == BEST and shelf.options == [BEST, *shelf.choices]
    for text in (embedded.tokenize({"path": EXAMPLE}, "auto", BEST)[2],
                 embedded.self_correction_tokenizer(EXAMPLE, "auto", 2, 0.3, 0, BEST)[2]):
        ranked = re.search(r"Chosen: (.+?), the best reconstruction of this image \(final PSNR: (.+?)\)\.", text)
        scores = {label: float(db) for label, db in re.findall(r"(.+?) (-?[0-9.]+) dB(?:, |$)", ranked.group(2))}
        assert set(scores) == set(shelf.choices) and ranked.group(1).strip() == max(scores, key=scores.get)


@pytest.mark.parametrize("name", ["random bytes", "truncated", "too large", "decompression bomb"])
def test_bad_uploads_give_a_message(handlers, tmp_path, name):
    path = str(bad_image_files(tmp_path)[name])
    expected = "decompression bomb" if name == "decompression bomb" else "image"
    for call in (lambda: handlers.tokenize({"path": path}, "auto", MODEL_OWN),
                 lambda: handlers.self_correction_tokenizer({"path": path}, "auto", 1, 0.1, 0, MODEL_OWN),
                 lambda: handlers.variations("uploaded image", {"path": path}, "auto", 1, 1, "a cube", 0, False, None)):
        assert expected in message(call)


def test_self_correction_bounds(handlers):
    assert "flipped scales must be between 1 and 4, got 9." in message(
        lambda: handlers.self_correction_tokenizer(EXAMPLE, "1:1", 9, 0.3, 0, MODEL_OWN))
    assert "flip fraction must be <= 1" in message(
        lambda: handlers.self_correction_tokenizer(EXAMPLE, "1:1", 1, 3, 0, MODEL_OWN))
    assert "tokenizer must be one of" in message(
        lambda: handlers.self_correction_tokenizer(EXAMPLE, "1:1", 1, 0.3, 0, "general-d99"))
    assert "scale must be between 1 and 3, got 4." in message(
        lambda: handlers.self_correction_generation("a cube", "3:2", 0, 4, 0.3))


def test_variations(handlers, record, app_pipe):
    updates = list(handlers.variations("last result", None, "auto", 2, 3, "", 5, False, record))
    sheet, status = updates[-1]
    assert len(updates) == 5 and status.startswith("Done: 3 variations of scales 3-4 with seeds 5-7")
    assert "the images differ from one another by" in status  # measured on these three (views.spread)
    assert len({Image.open(s).size for s, _ in updates}) == 1  # laid out for every variation from the start
    *_, (sheet, status) = handlers.variations("uploaded image", EXAMPLE, "auto", 1, 1, "a cube", 0, False, None)
    assert "prompt 'a cube'" in status and "differ" not in status  # one variation: nothing to compare
    # an empty prompt is the last generated one, whatever the source (as the placeholder says)
    *_, (sheet, status) = handlers.variations("uploaded image", EXAMPLE, "auto", 1, 1, "", 0, False, record)
    assert f"prompt '{record.prompt}'" in status
    assert "Generate an image first" in message(
        lambda: handlers.variations("last result", None, "auto", 2, 1, "", 0, False, None))
    assert "Enter a prompt" in message(
        lambda: handlers.variations("uploaded image", EXAMPLE, "auto", 1, 1, "", 0, False, None))
    assert "kept scales must be between 1 and 3, got 4." in message(
        lambda: handlers.variations("last result", None, "auto", 4, 1, "", 0, False, record))
    assert "number of variations must be between 1 and 8" in message(
        lambda: handlers.variations("last result", None, "auto", 1, 50, "", 0, False, record))


def test_unexpected_errors_are_one_line_and_logged(caplog):
    @user_errors
    def broken():
        raise KeyError("internal detail")

    @user_errors
    def broken_stream():
        yield 1
        raise ZeroDivisionError

    assert message(broken) == "Something went wrong on the server (KeyError); the details are in its log."
    assert "ZeroDivisionError" in message(broken_stream)
    assert "internal detail" in caplog.text  # the traceback is in the log, not in the message
    stream = broken_stream()
    next(stream)
    stream.close()  # cancelling (GeneratorExit) is not an error


# ---- serving ----


def test_gpu_decorator_only_with_spaces(monkeypatch):
    def fn(prompt):
        return prompt

    monkeypatch.setitem(sys.modules, "spaces", None)  # not importable
    assert runtime.gpu(fn) is fn
    calls = []
    fake = types.SimpleNamespace(GPU=lambda duration: lambda f: calls.append(duration) or f)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert runtime.gpu(fn, duration=90) is fn and calls == [90]


def test_banner_and_warm_up(app_pipe):
    text = runtime.banner(app_pipe, "runs/x")
    assert f"**{app_pipe.name}**" in text and "on **CPU** (float32)" in text and "up to 32x32 px" in text
    assert runtime.banner(app_pipe, None).startswith(f"Model **{app_pipe.name}** on ")  # the name said once
    assert runtime.warm_up(app_pipe) > 0


def test_banner_names_a_released_model_and_its_resolution(app_pipe, monkeypatch):
    monkeypatch.setattr(app_pipe, "name", "infinity-125m")
    H, W = app_pipe.schedules["1:1"].pixel_hw
    text = runtime.banner(app_pipe, "infinity-125m")
    assert text.startswith("Model **Infinity-125M** on **CPU**") and f"{W}x{H} px at 1:1" in text  # its name once


def test_command_line_defaults(monkeypatch):
    for name in ("INFINITY_MODEL", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.model, args.device, args.host, args.port, args.max_queue) == (None, None, "127.0.0.1", 7860, 32)
    monkeypatch.setenv("INFINITY_MODEL", "infinity-2b")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    args = app.parse_args([])
    assert (args.model, args.host, args.port) == ("infinity-2b", "0.0.0.0", 8080)
    assert app.parse_args(["--model", "infinity-8b", "--port", "9000"]).model == "infinity-8b"


def test_app_module_imports_nothing_heavy_and_a_missing_model_is_one_line(tmp_path):
    code = "import sys, app; print('torch' in sys.modules, 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    run = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "nothing"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("app.py: cannot load the model:")


def test_demo_is_queued_with_named_endpoints(app_pipe):
    demo = app.build_demo(app_pipe, max_queue=5, concurrency=2)
    assert demo._queue.max_size == 5
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"generate", "inspect_scale", "tokenize", "self_correction_tokenizer", "self_correction_generation",
            "self_correction_pair", "variations"} <= names
    on_device = [fn for fn in demo.fns.values() if fn.concurrency_id == "device"]
    assert len(on_device) == 7 and all(fn.concurrency_limit == 2 for fn in on_device)
