"""Campaigns: segments that add up to one run, depths brought to the same point, ship only what is better,
a lost runs/ folder resumed from the shipped weights at their step, and ledger tables built from the rows."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from infinity.campaigns.ledger import append_row, read_rows
from infinity.campaigns.tables import tokenizers_table
from infinity.campaigns.tokenizers import TokenizerCampaign, TokenizerPlan, run_position, segment_args
from infinity.checkpoints import save_model
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.recipes import RECIPES

TINY = RECIPES["shapes-tiny"]


def _photos(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        smooth = rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((48, 32), Image.BICUBIC).save(folder / f"{i}.png")


@pytest.fixture
def plan(tmp_path):
    _photos(tmp_path / "train" / "a", 6, 0)
    _photos(tmp_path / "heldout" / "b", 3, 1)
    _photos(tmp_path / "app", 1, 2)
    for bits in (8, 16):
        torch.manual_seed(bits)
        tok = BitwiseTokenizer(dataclasses.replace(TINY.tokenizer, bits=bits))
        save_model(tok.half(), tmp_path / "shipped" / f"d{bits}.safetensors")
    return TokenizerPlan(
        bits=(8, 16), steps=4, batch_size=2, low_res="16:2", segment=2, data=str(tmp_path / "train"),
        heldout=str(tmp_path / "heldout"), eval_size=32, app_photo=str(tmp_path / "app" / "0.png"),
        runs=str(tmp_path / "runs"),
        shipped=str(tmp_path / "shipped" / "d{bits}.safetensors"), start_images=10,
        flags=("--recipe", "shapes-tiny", "--lr", "1e-3", "--warmup-steps", "1", "--checkpoint-every", "1",
               "--no-progress"),
    )


def test_campaign_trains_depths_in_turn_ships_only_better_weights_and_resumes_without_runs(plan, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    campaign = TokenizerCampaign(plan, ledger)
    campaign.run(minutes=30)
    rows = read_rows(ledger)
    segments = [(r["run"], r["step_from"], r["step"]) for r in rows if r["kind"] == "segment"]
    assert segments == [("general-d8", 0, 2), ("general-d16", 0, 2), ("general-d8", 2, 4), ("general-d16", 2, 4)]
    assert all(r["cpu_s"] > 0 and r["images_seen"] == 10 + r["step"] * 2 for r in rows if r["kind"] == "segment")
    evaluations = [r for r in rows if r["kind"] == "evaluation"]
    assert [(r["run"], r["step"]) for r in evaluations] == [
        ("general-d8", 0), ("general-d16", 0), ("general-d8", 2), ("general-d16", 2), ("general-d8", 4),
        ("general-d16", 4)]
    assert all(r["app_photo"] == plan.app_photo and 0 < r["app_photo_psnr_db"] < 99 for r in evaluations)
    for run in ("general-d8", "general-d16"):  # shipped exactly when better than the best shipped so far
        best = float("-inf")
        for r in (r for r in evaluations if r["run"] == run):
            assert r["shipped"] == (r["weights"] != "shipped" and r["psnr_db"] > best)
            if r["shipped"] or r["weights"] == "shipped":
                best = max(best, r["psnr_db"])
    shipped = [r for r in evaluations if r["shipped"]]
    assert shipped, "random tokenizers trained on these photos should improve at least once"
    last = shipped[-1]
    bits = int(last["run"].rsplit("d", 1)[1])
    with safe_open(plan.shipped_file(bits), "pt") as f:  # shipped in 16 bits
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}

    # runs/ lost: the run goes on from the shipped weights at the step they were shipped at
    shutil.rmtree(plan.runs)
    step, from_checkpoint = run_position(plan, bits, read_rows(ledger))
    assert (step, from_checkpoint) == (last["step"], False)
    args = segment_args(plan, bits, step, from_checkpoint, 4, 1)
    assert args[args.index("--init-from") + 1] == str(plan.shipped_file(bits))
    assert (args[args.index("--start-step") + 1] == str(step)) if step else "--start-step" not in args

    table = tokenizers_table_from(ledger)
    assert f"| {last['run']} | shipped | {last['step']} |" in table and f"{last['psnr_db']:.2f} dB" in table


def tokenizers_table_from(ledger):
    root = ledger.parent / "root"
    (root / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    shutil.copy(ledger, root / "benchmarks" / "results" / "ledger_tokenizers.jsonl")
    return tokenizers_table(root)


@pytest.mark.parametrize("photo_db, verdict", [(19.95, "not met (best general-d32 19.95 dB"),
                                                (20.2, "met (best general-d32 20.20 dB")])
def test_tokenizer_targets_say_whether_the_app_photograph_reaches_20_db(tmp_path, photo_db, verdict):
    ledger = tmp_path / "ledger.jsonl"
    for step, with_photo in ((100, True), (200, False)):  # the photograph's last common step is 100
        for bits, db in ((8, 21.0), (16, 22.1), (32, 22.7)):
            append_row(ledger, {"run": f"general-d{bits}", "kind": "evaluation", "step": step, "weights": "fp16",
                                "heldout": "h", "heldout_images": 3, "psnr_db": db, "psnr_pooled_db": db - 2,
                                "shipped": True, "images_seen": 1,
                                **({"app_photo": "p.png", "app_photo_psnr_db": photo_db - (32 - bits) / 100}
                                   if with_photo else {})})
    table = tokenizers_table_from(ledger)
    assert "The app's photograph (`p.png`, held out) >= 20 dB before any flip, at step 100: " + verdict in table
    assert "general-d8 19.71" in table or "general-d8 19.96" in table


def test_ledger_rows_carry_the_machine_and_refuse_damage(tmp_path):
    path = tmp_path / "l.jsonl"
    row = append_row(path, {"run": "x", "kind": "segment"})
    assert row["cpu"] and len(row["load_average"]) == 3 and read_rows(path) == [row]
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_rows(path)



def test_embedded_campaign_scores_each_segment_and_ships_only_a_better_model(tmp_path):
    from infinity.campaigns.embedded import EmbeddedCampaign, EmbeddedPlan
    from infinity.options import SamplingDefaults
    from infinity.pipeline import InfinityPipeline
    from infinity.text import MiniLMTextEncoder
    from infinity.transformer import Infinity

    torch.manual_seed(0)
    folder = tmp_path / "model"
    InfinityPipeline(BitwiseTokenizer(TINY.tokenizer).eval(), Infinity(TINY.transformer).eval(),
                     MiniLMTextEncoder.from_pretrained(max_length=32), TINY.schedules, SamplingDefaults(cfg=2.0),
                     "tiny", "cpu", torch.float32,
                     examples=["a large red circle in the center"]).save_pretrained(folder)
    plan = EmbeddedPlan(steps=4, batch_size=2, segment=2, folder=str(folder), run=str(tmp_path / "run"),
                        counts=(2, 1, 0), open_prompts=2, seeds=2,
                        flags=("--recipe", "shapes-tiny", "--lr", "1e-3", "--warmup-steps", "1",
                               "--checkpoint-every", "1", "--no-progress"))
    ledger = tmp_path / "ledger.jsonl"
    EmbeddedCampaign(plan, ledger).run(minutes=30)
    rows = read_rows(ledger)
    assert [(r["kind"], r["step"]) for r in rows] == [("evaluation", 0), ("segment", 2), ("evaluation", 2),
                                                      ("segment", 4), ("evaluation", 4)]
    best = rows[0]["adherence_sum"]
    for r in rows[2::2]:
        assert set(r["adherence"]) == {"1", "2"} and len(r["seed_spread"]) == 2
        assert r["shipped"] == (r["adherence_sum"] > best)
        best = max(best, r["adherence_sum"]) if r["shipped"] else best
    with safe_open(folder / "transformer.safetensors", "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == ({torch.float16} if any(r.get("shipped") for r in rows) else {torch.float32})
    shutil.rmtree(plan.run)  # runs/ lost: the shipped model's step, or 0 when nothing shipped
    shipped = [r["step"] for r in rows if r.get("shipped")]
    assert EmbeddedCampaign(plan, ledger).position() == ((shipped[-1] if shipped else 0), False)


def test_embedded_table_carries_the_campaign_forward_at_its_fitted_rates(tmp_path):
    from infinity.campaigns.tables import embedded_table

    ledger = tmp_path / "root" / "benchmarks" / "results" / "ledger_embedded.jsonl"
    scores = {"seed_spread_mean": 1.0, "prompts_over_spread_target": 1, "open_prompts": 6, "scenes": [3, 2, 2],
              "seeds": 4, "shipped": False}
    append_row(ledger, {"run": "embedded-transformer", "kind": "evaluation", "step": 0, "weights": "shipped",
                        "adherence": {"1": 0.8, "2": 0.1, "3": 0.0},
                        "teacher_forced_last_scale_object_bit_error": {"1": 0.2, "2": 0.3, "3": 0.4}, **scores})
    for i in range(1, 5):  # one CPU-hour per segment; error -0.01 and adherence +0.05 per hour for one object
        append_row(ledger, {"run": "embedded-transformer", "kind": "segment", "step_from": 100 * (i - 1),
                            "step": 100 * i, "cpu_s": 3600.0})
        append_row(ledger, {"run": "embedded-transformer", "kind": "evaluation", "step": 100 * i, "weights": "fp16",
                            "adherence": {"1": 0.5 + 0.05 * i, "2": 0.0, "3": 0.0},
                            "teacher_forced_last_scale_object_bit_error": {"1": 0.2 - 0.01 * i, "2": 0.3, "3": 0.4},
                            **scores})
    last = embedded_table(tmp_path / "root").splitlines()[-1]
    assert "last 4 evaluations (steps 100 to 400, 3.00 CPU-hours apart" in last
    assert "teacher-forced error -0.010 / +0.000 / +0.000 per CPU-hour, so 0.130 / 0.300 / 0.400 after 3 more" in last
    assert "adherence +0.050 / +0.000 / +0.000 per CPU-hour, so 0.85 / 0.00 / 0.00 after 3 more" in last


def test_the_gpu_script_parses_and_answers_bad_use_with_its_usage():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu_tokenizers.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for argv in ([], ["run"], ["collect"], ["fly"]):
        bad = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.startswith("usage: benchmarks/gpu_tokenizers.sh"), argv
