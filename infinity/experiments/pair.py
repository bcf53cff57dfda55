"""Ship one matched pair of the self-correction claim for the app (`infinity/eval/pair.py` reads it).

    python -m infinity.experiments pair --without runs/claims/strength-0-seed0 \\
        --with runs/claims/strength-0.3-seed0 --out assets/self-correction

Checks that the two arm folders were trained alike (model config, seed, batch, data, schedule, text encoder, and
every loss setting but the self-correction ones), stores both transformers in fp16 (a few MB each) and writes
pair.json: the tokenizer (a path relative to the output folder, with its SHA-256), the schedule, the held-out
scenes the app measures on, how well the tokenizer reconstructs them at the pair's size, and what each arm was
trained with. The app uses the 1:1 schedule.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from ..checkpoints import load_model, save_model
from ..eval.pair import ARMS, ASPECT_RATIO, FORMAT, FORMAT_VERSION, PAIR_FILE, load_checked, read_info, sha256
from ..eval.shapes import evaluate_tokenizer, evaluation_scenes
from ..schedules import Schedule
from ..transformer import Infinity

TRAINING_FILE = "transformer_training.json"
SELF_CORRECTION_KEYS = {"self_correction_scales", "self_correction_strength"}
MATCHED_KEYS = ("config", "tokenizer", "text_encoder", "data", "batch_size", "seed", "schedules")


def _arm(folder: Path) -> tuple[dict, dict, Infinity]:
    """(training record, done.json, the transformer) of a finished claims arm."""
    training, done, weights = folder / TRAINING_FILE, folder / "done.json", folder / "transformer.safetensors"
    for path in (training, done, weights):
        if not path.is_file():
            raise ValueError(f"{folder} is not a finished arm: no {path.name}")
    return json.loads(training.read_text()), json.loads(done.read_text()), load_checked(weights, Infinity)


def flip_strength(loss: dict) -> float:
    """The self-correction a training record used: its strength, 0 when no scale was flipped."""
    return loss["self_correction_strength"] if loss.get("self_correction_scales", 0) > 0 else 0.0


def check_matched(without: dict, with_: dict) -> None:
    """ValueError unless the two training records differ in self-correction alone, and only `with_` uses it."""
    for key in MATCHED_KEYS:
        if without.get(key) != with_.get(key):
            raise ValueError(f"the two arms differ in {key!r}: not a matched pair")
    a = {k: v for k, v in without["loss"].items() if k not in SELF_CORRECTION_KEYS}
    b = {k: v for k, v in with_["loss"].items() if k not in SELF_CORRECTION_KEYS}
    if a != b:
        differ = sorted(k for k in a if a[k] != b.get(k))
        raise ValueError(f"the two arms' losses differ beyond self-correction: {differ}")
    if flip_strength(without["loss"]) != 0 or flip_strength(with_["loss"]) <= 0:
        raise ValueError("--without needs self-correction strength 0 and --with a positive one")


def export_pair(without: str | Path, with_: str | Path, tokenizer: str | Path, out: str | Path,
                heldout: dict[int, int]) -> Path:
    """Write the pair folder `out`; returns pair.json's path (read back and checked)."""
    out, tokenizer = Path(out), Path(tokenizer)
    if not tokenizer.is_file():
        raise ValueError(f"no tokenizer at {tokenizer}")
    arms = dict(zip(ARMS, (_arm(Path(without)), _arm(Path(with_)))))
    check_matched(arms["without"][0], arms["with"][0])
    training = arms["with"][0]
    if training["text_encoder"] != "minilm":
        raise ValueError(f"the app's pair runs on the MiniLM text encoder; these arms used {training['text_encoder']}")
    if ASPECT_RATIO not in training["schedules"]:
        raise ValueError(f"the pair needs arms trained on the {ASPECT_RATIO} aspect ratio")
    tok_config = json.loads(json.dumps(load_model(tokenizer).config.to_dict()))  # tuples as JSON lists
    if {k: tok_config.get(k) for k in training["tokenizer"]} != training["tokenizer"]:
        raise ValueError(f"{tokenizer} is not the arms' tokenizer (its config differs)")
    schedule = training["schedules"][ASPECT_RATIO]
    scenes = evaluation_scenes(heldout)
    tok, grid = load_model(tokenizer), Schedule(tuple(map(tuple, schedule)), tok_config["patch_size"])
    per_scene = [evaluate_tokenizer(tok, grid, [scene]) for scene in scenes]  # (passed, PSNR) of each scene
    psnrs = [sum(q.psnr_sum.values()) for q in per_scene]
    passed = [sum(q.passed.values()) for q in per_scene]
    models = {}
    for arm, (record, done, model) in arms.items():
        save_model(copy.deepcopy(model).half(), out / f"{arm}.safetensors")
        models[arm] = {"file": f"{arm}.safetensors", "self_correction_strength": flip_strength(record["loss"]),
                       "self_correction_scales": record["loss"]["self_correction_scales"], "seed": record["seed"],
                       "steps": done["steps"], "train_seconds": done["seconds"]}
    info = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "tokenizer": os.path.relpath(tokenizer.resolve(), out.resolve()), "tokenizer_sha256": sha256(tokenizer),
        "text_encoder": {"kind": training["text_encoder"], "max_length": training["config"]["text_maxlen"]},
        "schedule": schedule,
        "heldout": {str(n): c for n, c in sorted(heldout.items())},
        "tokenizer_on_heldout": {  # its clean reconstructions against the renders, at the pair's size
            "psnr_db": round(sum(psnrs) / len(scenes), 2), "parser_pass": round(sum(passed) / len(scenes), 4)},
        # the app's first scene: of those whose reconstruction the parser reads (all, if none), the best rebuilt
        "default_scene": max(range(len(scenes)), key=lambda i: (passed[i] if any(passed) else 0, psnrs[i])) + 1,
        "batch_size": training["batch_size"], "models": models,
    }
    (out / PAIR_FILE).write_text(json.dumps(info, indent=1) + "\n")
    read_info(out)
    return out / PAIR_FILE
