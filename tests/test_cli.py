"""`python -m infinity tokenize` end to end, in a subprocess, with a tokenizer in the official file format."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import save_model
from reference_cases import discover

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "shapes.png"


def _run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "infinity", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def official_weights(tmp_path_factory):
    """The recorded fixture tokenizer (d16, patch 16) saved as an official .pth: base 32, mult 1,1,1,1,2."""
    path = tmp_path_factory.mktemp("w") / "vae.pth"
    case = discover("tokenizer")[0]
    torch.save({"vae": case.weights("vae.")}, path)
    return path


def _psnr_of_files(a: Path, b: Path) -> float:
    """PSNR in dB of two 8-bit images, computed here from the files (not by the library)."""
    import numpy as np
    from PIL import Image

    with Image.open(a) as x, Image.open(b) as y:
        mse = ((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).mean()
    return 10 * np.log10(255.0**2 / mse)


def test_tokenize_writes_every_scale_and_its_psnr(tmp_path, official_weights):
    # The fixture architecture is not a preset: wrap it in our own safetensors format via the official loader.
    from reference_cases import tokenizer_config
    from infinity.checkpoints import load_official_tokenizer

    case = discover("tokenizer")[0]
    tok = load_official_tokenizer(official_weights, tokenizer_config(case.meta))
    ours = save_model(tok, tmp_path / "tok.safetensors")

    result = _run("tokenize", str(EXAMPLE), "--weights", str(ours), "--out", str(tmp_path / "out"), "--budget", "0.06M", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "psnr.json").read_text())
    # The example is 3:2 landscape: the nearest template is 0.666 (3:2), 7 scales ending at 14x21.
    assert [r["grid"] for r in rows][-1] == [14, 21] and len(rows) == 7
    for r in rows:
        assert f"{r['psnr_db']:.2f}" in result.stdout
        # The written reconstruction against the written (resized) input: what the CLI reports, to within the
        # rounding of the reconstruction to 8 bits.
        assert _psnr_of_files(tmp_path / "out" / r["file"], tmp_path / "out" / "input.png") == pytest.approx(
            r["psnr_db"], abs=0.01)
    assert "336x224 px" in result.stdout


def test_tokenize_with_official_pth_needs_a_matching_preset(tmp_path, official_weights):
    result = _run("tokenize", str(EXAMPLE), "--preset", "infinity-vae-d16", "--weights", str(official_weights),
                  "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "vae.pth" in result.stderr and "shape mismatches" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "--preset", "infinity-vae-d16", "--weights", "x.pth"], "missing.png: no such image file"),
        (["README.md", "--preset", "infinity-vae-d16", "--weights", "x.pth"], "not a readable image"),
        ([str(EXAMPLE), "--preset", "infinity-vae-d16", "--weights", "nope.pth"], "nope.pth: no such file"),
        ([str(EXAMPLE), "--preset", "infinity-vae-d16"], "could not download infinity_vae_d16.pth"),
        ([str(EXAMPLE), "--weights", "w.pth"], "--preset is required"),
        ([str(EXAMPLE), "--preset", "infinity-vae-d16", "--device", "cuda:0"], "no usable CUDA GPU"),
        ([str(EXAMPLE), "--preset", "infinity-vae-d16", "--device", "toaster"], "unknown device"),
        ([str(EXAMPLE), "--preset", "infinity-vae-d16", "--weights", "x.pth", "--aspect-ratio", "wide"], "aspect"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    if args[0] == "README.md":
        (tmp_path / "README.md").write_text("not an image")
    result = _run("tokenize", *args[:1], *args[1:], "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_tokenize_offline_is_one_line_within_seconds(tmp_path):
    """No cache and no Hub: one line, no retries (the Hub here is a closed local port)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "infinity", "tokenize", str(EXAMPLE), "--preset", "infinity-vae-d16",
                             "--out", str(tmp_path / "o")], cwd=tmp_path, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "could not download infinity_vae_d16.pth" in result.stderr and "cannot be reached" in result.stderr
    assert seconds < 60  # imports included, on a busy machine; the Hub check itself waits at most 5 s


def test_tokenize_without_weights_uses_the_embedded_tokenizer_at_the_apps_size(tmp_path):
    result = _run("tokenize", str(EXAMPLE), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((ROOT / "assets" / "embedded" / "pipeline.json").read_text())
    H, W = (n * config["patch_size"] for n in config["schedules"]["3:2"][-1])  # the app's 3:2 size
    assert f"7 scales, {W}x{H} px, 16 bits per token" in result.stdout


# ---- generate ----


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight model folder in our format (see test_pipeline.py): 16x16, 24x16 and 16x24 px."""
    from infinity.pipeline import InfinityPipeline
    from infinity.text import MiniLMTextEncoder
    from test_pipeline import DEFAULTS, SCHEDULES, random_models

    tokenizer, transformer = random_models()
    pipe = InfinityPipeline(tokenizer, transformer, MiniLMTextEncoder.from_pretrained(max_length=32), SCHEDULES,
                            DEFAULTS, "tiny", "cpu", torch.float32)
    return pipe.save_pretrained(tmp_path_factory.mktemp("model"))


def test_generate_writes_the_image_and_every_scale(tmp_path, tiny_model_dir):
    result = _run("generate", "--model", str(tiny_model_dir), "--prompt", "a red cube", "--out", "out/cube.png",
                  "--aspect-ratio", "3:2", "--seed", "4", "--cfg", "2", "--save-scales", "scales", "--device", "cpu",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import numpy as np
    from PIL import Image

    from infinity.pipeline import InfinityPipeline

    pipe = InfinityPipeline.from_pretrained(tiny_model_dir, device="cpu")
    expected = pipe("a red cube", aspect_ratio="3:2", seed=4, cfg=2)
    with Image.open(tmp_path / "out" / "cube.png") as image:
        assert image.size == (24, 16) and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(expected.image))  # the options reached the pipeline
    assert sorted(p.name for p in (tmp_path / "scales").iterdir()) == ["scale_01.png", "scale_02.png", "scale_03.png"]
    assert "out/cube.png: 24x16, 3 scales, seed 4" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", " "], "prompt must be a non-empty string"),
        (["--cfg", "nan"], "cfg must be a finite number"),
        (["--tau", "0"], "tau (temperature) must be > 0"),
        (["--top-p", "2"], "top_p must be in [0, 1]"),
        (["--aspect-ratio", "16:9"], "unknown aspect ratio '16:9'; this model has 1:1, 3:2, 2:3"),
        (["--seed", "-1"], "seed must be an integer in [0, 2**53 - 1]"),
        (["--out", "cube.txt"], "unknown image format '.txt'"),
        (["--device", "toaster"], "unknown device"),
        (["--model", "nowhere"], "nowhere: neither a model name (infinity-125m, infinity-2b, infinity-8b) nor a model folder"),
    ],
)
def test_generate_bad_input_gives_one_clear_line(tmp_path, tiny_model_dir, capsys, args, message):
    from infinity.__main__ import main

    base = {"--model": str(tiny_model_dir), "--prompt": "a red cube", "--out": str(tmp_path / "x.png")}
    base.update(zip(args[::2], args[1::2]))
    assert main(["generate", *[x for pair in base.items() for x in pair]]) == 2
    err = capsys.readouterr().err  # model-dependent checks come after loading, and its progress bar
    assert err.splitlines()[-1].startswith("error: ") and message in err and "Traceback" not in err


def test_generate_official_model_offline_without_weights_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    env.pop("INFINITY_WEIGHTS_DIR", None)
    result = subprocess.run(
        [sys.executable, "-m", "infinity", "generate", "--model", "infinity-2b", "--prompt", "a cube", "--out", "x.png",
         "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: Infinity-2B weights not found: ")
    assert "INFINITY_WEIGHTS_DIR" in result.stderr and "Traceback" not in result.stderr


def test_the_command_line_does_not_import_the_app():
    """The library must not depend on its UI: importing the CLI module loads no `infinity.app` module."""
    code = "import sys, infinity.__main__; print(sorted(m for m in sys.modules if m.startswith('infinity.app')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
