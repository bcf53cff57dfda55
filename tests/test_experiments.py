"""python -m infinity.experiments claims, end to end on a tiny configuration: every arm and seed trained, scored and
reported; a second run skips what is done."""
import json

import pytest
import torch
from PIL import Image

from infinity.checkpoints import save_model
from infinity.experiments.__main__ import main
from infinity.experiments.claims import ClaimsConfig, arms
from infinity.experiments.measures import index_head_sizes
from infinity.experiments.report import markdown
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.recipes import RECIPES
from infinity.transformer import Infinity

TINY = RECIPES["shapes-tiny"]


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toks")
    torch.manual_seed(0)
    d8 = save_model(BitwiseTokenizer(TINY.tokenizer), folder / "tiny-d8.safetensors")
    d4 = save_model(BitwiseTokenizer(TINY.tokenizer_config(4)), folder / "tiny-d4.safetensors")
    return d8, d4


def test_the_claims_driver_runs_every_arm_and_seed_and_resumes(tmp_path, tokenizer_files, one_thread):
    d8, d4 = tokenizer_files
    argv = ["claims", "--recipe", "shapes-tiny", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
            "--tokenizer", str(d8), "--head-bits", "4", "--tokenizer-steps", "1",
            "--bits-tokenizers", str(d4), str(d8), "--bits-pixels", "32",
            "--seeds", "0", "1", "--steps", "2", "--batch-size", "2", "--strengths", "0", "0.5",
            "--eval-count", "1", "1", "0", "--recovery-scales", "2", "--recovery-fractions", "0", "0.5"]
    assert main(argv) == 0
    records = json.loads((tmp_path / "docs" / "results.json").read_text())
    trained = {(r["claim"], r["arm"], r["seed"]) for r in records if r["seed"] is not None}
    assert trained == {("self-correction", f"strength-{s}", seed) for s in ("0", "0.5") for seed in (0, 1)} | {
        ("head", f"{h}-d4", seed) for h in ("bits", "index") for seed in (0, 1)}
    for r in records:
        if r["seed"] is not None:
            m = r["metrics"]
            assert m["steps"] == 2 and 0 < m["nats_per_bit"] < 5 and 0 <= m["adherence"] <= 1 and r["seconds"] >= 0
            assert [(p["k"], p["p"]) for p in m["recovery"]] == [(2, 0.0), (2, 0.5)]
    assert {r["metrics"]["bits"] for r in records if r["claim"] == "bits"} == {4, 8}
    assert [r["metrics"]["d"] for r in records if r["arm"] == "head-size"] == [4, 8, 12, 16, 20, 24, 32]
    table = (tmp_path / "docs" / "results.md").read_text()
    assert table == markdown(records)
    for arm in ("strength-0", "strength-0.5", "bits-d4", "index-d4", "| 4 |", "| 8 |"):
        assert arm in table
    figure = Image.open(tmp_path / "docs" / "recovery.png")
    assert figure.size[0] > 300 and len(figure.convert("RGB").getcolors(2**16)) > 3  # drawn, not blank

    index_model = tmp_path / "runs" / "index-d4-seed1" / "transformer.safetensors"
    stamp = index_model.stat().st_mtime_ns
    (tmp_path / "runs" / "bits-d4-seed0" / "scores.json").unlink()  # scores lost: computed again, not retrained
    assert main(argv) == 0
    assert index_model.stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert main([*argv, "--only", "bits"]) == 0  # one claim again: the others' scored arms stay in the results
    assert len(json.loads((tmp_path / "docs" / "results.json").read_text())) == len(records)
    for r in again + records:  # timings aside
        r["metrics"].pop("eval_seconds", None)
        r["seconds"] = r["seconds"] if r["seed"] is not None else None
    assert again == records  # the same weights, scenes and seeds: the same scores


def test_arms_pair_each_seed_across_the_compared_settings():
    cfg = ClaimsConfig(seeds=(0, 1, 2))
    by_claim = {}
    for arm in arms(cfg):
        by_claim.setdefault(arm.claim, []).append(arm)
    assert len(by_claim["self-correction"]) == 9 and {a.strength for a in by_claim["self-correction"]} == {0, 0.3, 0.6}
    assert len(by_claim["head"]) == 6 and {a.head for a in by_claim["head"]} == {"bits", "index"}
    assert len({a.folder for a in arms(cfg)}) == 15


def test_index_head_sizes_match_the_model_and_grow_as_two_to_the_d():
    config = TINY.transformer_config(TINY.tokenizer, "index")
    model = Infinity(config)
    rows = index_head_sizes(config, 85, 16, [8, 16])
    assert rows[0]["index_head_params"] == sum(p.numel() for p in model.head.parameters())
    assert rows[0]["rest_of_model_params"] + rows[0]["index_head_params"] == sum(p.numel() for p in model.parameters())
    assert rows[1]["index_head_params"] == 256 * rows[0]["index_head_params"]
    assert rows[1]["index_logits_bytes"] == 4 * 16 * 85 * 2**16


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["claims", "--tokenizer", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]) == 2
    assert "no tokenizer at" in capsys.readouterr().err
