"""`python -m infinity tokenize` end to end, in a subprocess, with a tokenizer in the official file format."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import save_model
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
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


def test_tokenize_writes_every_scale_and_prints_psnr(tmp_path, official_weights):
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
        assert (tmp_path / "out" / r["file"]).is_file()
        assert f"{r['psnr_db']:.2f}" in result.stdout
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
