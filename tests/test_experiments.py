"""python -m infinity.experiments claims, end to end on a tiny configuration: every arm and seed trained, scored and
reported; a second run skips what is done."""
import json
from pathlib import Path

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
            recall = m["attribute_recall_per_objects"]["1"]  # free generation, graded
            assert set(recall) == {"position", "color", "shape", "size"} and all(0 <= v <= 1 for v in recall.values())
            assert m["extra_objects_per_objects"]["1"] >= 0
    assert {r["metrics"]["bits"] for r in records if r["claim"] == "bits"} == {4, 8}
    (tok,) = [r for r in records if r["claim"] == "tokenizer"]  # what the parser reads of the tokenizer's own scenes
    assert tok["tokenizer"] == str(d8) and tok["metrics"]["pixels"] == [32, 32]
    passed = tok["metrics"]["parser_pass"]
    assert set(passed) == {"1", "2"} and all(0 <= v <= 1 for v in passed.values())
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


def test_the_runner_builds_arms_that_differ_only_in_what_each_claim_compares(tmp_path, tokenizer_files, monkeypatch):
    """The training runs `run_claims` actually starts, parsed by the trainer's own parser: within a claim and a
    seed, every option (seed, data, steps, batch, init, tokenizer, schedule weights) is the same but the arm's
    variable; each arm trains with its own seed and strength, and self-correction is on exactly where asked."""
    from infinity.experiments import claims, report
    from infinity.train.__main__ import build_parser

    d8, d4 = tokenizer_files
    started = []

    def fake_train(argv):
        started.append(vars(build_parser().parse_args(argv)))
        Path(argv[argv.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
        return 0

    monkeypatch.setattr(claims, "train_cli", fake_train)
    monkeypatch.setattr(claims.Runner, "score_arm", lambda self, arm, folder, tokenizer: {})
    monkeypatch.setattr(report, "write_report", lambda records, cfg: None)
    cfg = ClaimsConfig(out=str(tmp_path / "runs"), docs=str(tmp_path / "docs"), recipe="shapes-tiny", tokenizer=str(d8),
                       head_tokenizer=str(d4), head_bits=4, seeds=(0, 1), steps=3, self_correction_strengths=(0.0, 0.5))
    claims.run_claims(cfg, only=("self-correction", "head"))
    built = {Path(a["out"]).name: a for a in started}
    assert sorted(built) == sorted(arm.folder for arm in arms(cfg))
    K = next(iter(TINY.schedules.values())).num_scales
    for arm in arms(cfg):
        a = built[arm.folder]
        assert a["seed"] == arm.seed and a["steps"] == cfg.steps and a["head"] == arm.head
        assert a["tokenizer"] == str(d8 if arm.claim == "self-correction" else d4)
        on = a["self_correction_scales"] > 0
        assert on == (arm.strength > 0) and (not on or (a["self_correction_scales"], a["self_correction_strength"])
                                               == (K - 1, arm.strength))
    variables = {"self-correction": {"self_correction_scales", "self_correction_strength"}, "head": {"head"}}
    for arm in arms(cfg):
        for other in arms(cfg):
            if other.claim == arm.claim:
                differ = {k for k in built[arm.folder] if built[arm.folder][k] != built[other.folder][k]}
                allowed = {"out"} | variables[arm.claim] | ({"seed"} if other.seed != arm.seed else set())
                assert differ <= allowed, (arm.folder, other.folder, differ - allowed)


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


def test_the_claims_tokenizer_curve_names_what_each_one_object_failure_got_wrong():
    import importlib.util

    from infinity.data.scene_parser import ParsedScene
    from infinity.data.shapes import Scene, ShapeObject

    spec = importlib.util.spec_from_file_location(
        "curve", Path(__file__).resolve().parent.parent / "benchmarks" / "claims_tokenizer_curve.py")
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    want = ShapeObject("triangle", "red", "small", "at the top left")
    scene = Scene((want,), "black", name_background=True)
    other = ShapeObject("circle", "blue", "large", "in the center")
    assert curve.failure(ParsedScene("black", (want,)), scene) is None
    assert curve.failure(ParsedScene("black", (want, other)), scene) == "only extras"
    assert curve.failure(ParsedScene("black", (other,)), scene) == "cell empty"
    blob = ShapeObject("circle", "red", "small", "at the top left")
    assert curve.failure(ParsedScene("black", (blob,)), scene) == "shape"
    wrong = ShapeObject("square", "orange", "large", "at the top left")
    assert curve.failure(ParsedScene("black", (wrong,)), scene) == "color+shape+size"
    assert curve.failure(ParsedScene("white", (want,)), scene) == "background"
