"""One generator per block of figures in README.md and docs/: each reads its result files and writes the markdown
the page shows, so no measured figure is typed by hand. Registered by block name in `GENERATORS`.

Result files: benchmarks/results/*.json (`python -m infinity.bench`, `infinity.bench.compare`, `infinity.eval`),
docs/claims/results.json (`python -m infinity.experiments claims`), assets/self-correction/pair.json
(`python -m infinity.experiments pair`).
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..campaigns.ledger import ledger_path, read_rows
from ..campaigns.tables import embedded_table, shipped_embedded_evaluation, tokenizers_progress, tokenizers_table
from ..eval.diversity import VISIBLE_DIFFERENCE
from .blocks import Generator

RESULTS = Path("benchmarks/results")
CLAIMS = Path("docs/claims/results.json")


def _load(root: Path, path: Path | str) -> dict | list:
    return json.loads((root / path).read_text())


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


def _median(s: float) -> str:
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def _gib(n: int) -> str:
    g = n / 2**30
    return f"{g:.2f} GiB" if g < 1 else f"{g:.1f} GiB"


# ---- Performance (README) ----

# (row label, result file, drift file or None, also the row of the run with a preview at every scale)
PERFORMANCE_ROWS = (
    ("embedded, 128x128, 1 thread", "embedded_cpu_1thread.json", None, True),
    ("embedded, 128x128, 2 threads", "embedded_cpu_2threads.json", None, False),
    ("embedded, 128x128, 2 threads, int8 blocks (`--dtype int8`)", "embedded_cpu_int8_2threads.json",
     "embedded_int8_vs_fp32.json", False),
    ("**Infinity-125M**, 256x256, T5-XL-sized encoder, median of 3", "infinity125m_cpu_fp32.json", None, False),
    ("the same, int8 blocks", "infinity125m_cpu_int8.json", "infinity125m_int8_vs_fp32.json", False),
    ("Infinity-2B, 256x256 (0.06M), T5-XL-sized encoder, one run", "infinity2b_cpu_fp32_idle.json", None, False),
    ("the same, int8 blocks", "infinity2b_cpu_int8.json", "infinity2b_int8_vs_fp32.json", False),
    ("Infinity-8B, 256x256 (0.06M), int8 blocks, T5-XL-sized encoder, one run", "infinity8b_cpu_int8.json", None,
     False),
)


def _stages(result: dict) -> str:
    stages = result["stages"]
    transformer = sum(s for name, s in stages.items() if name.startswith("transformer_step"))
    return (f"transformer {_seconds(transformer)}, VAE decode {_seconds(stages['vae_decode'])}, "
            f"text {_seconds(stages['text_encoding'])}")


def _drift(root: Path, name: str, link: str = "") -> str:
    drift = _load(root, RESULTS / name)
    shares = [100 * s for s in drift["bits_differ_per_scale"]]
    return (f"image {drift['psnr_db']:.1f} dB from fp32's, {min(shares):.2f}-{max(shares):.2f} % of bits per scale "
            f"differ ([drift]({link}{RESULTS / name}))")


README_PERFORMANCE = ("embedded, 128x128, 2 threads", "**Infinity-125M**, 256x256, T5-XL-sized encoder, median of 3",
                      "Infinity-2B, 256x256 (0.06M), T5-XL-sized encoder, one run")


def performance_summary(root: Path) -> str:
    """The README's rows: one per model, fp32 (the rest in docs/performance.md)."""
    return performance(root, README_PERFORMANCE)


def performance_page(root: Path) -> str:
    """Every row, for docs/performance.md (links one folder up)."""
    return performance(root, link="../")


def performance(root: Path, only: tuple[str, ...] = (), link: str = "") -> str:
    lines = ["| model, image | median, end to end | largest stages (int8: drift) | peak memory | result file |",
             "|---|---|---|---|---|"]
    for label, name, drift, previews in PERFORMANCE_ROWS:
        if only and label not in only:
            continue
        r = _load(root, RESULTS / name)
        stages = _drift(root, drift, link) if drift else _stages(r)  # int8 rows: how far the image moved
        lines.append(f"| {label} | **{_median(r['median_s'])}** | {stages} | {_gib(r['peak_memory_bytes'])} | "
                     f"[{name}]({link}{RESULTS / name}) |")
        if previews and not only:
            lines.append(f"| the same, a preview decoded at every scale | **{_median(r['previews']['median_s'])}** "
                         "| | | same file, `previews` |")
    return "\n".join(lines)


def matmul_peak(root: Path) -> str:
    peaks = [_load(root, RESULTS / name)["matmul_peak_gflops"] for _, name, _, _ in PERFORMANCE_ROWS]
    return f"{min(peaks):.0f}-{max(peaks):.0f} GFLOP/s"


def space_125m(root: Path) -> str:
    """The first download of a 125M Space, estimated from parameter counts (benchmarks/space_sizes.py)."""
    sizes = _load(root, RESULTS / "infinity125m_space_sizes.json")
    t5 = next(v["bytes"] for k, v in sizes["files"].items() if k.startswith("google/flan-t5-xl"))
    minutes = sizes["download_minutes"]
    share = "nearly all" if t5 / sizes["total_bytes"] > 0.85 else "most"
    return (f"about {sizes['total_bytes'] / 1e9:.0f} GB, {share} of it Flan-T5-XL: about "
            f"{minutes['100 MB/s']:.0f} minutes at 100 MB/s, {minutes['50 MB/s']:.0f} at 50 MB/s")


def weights_2b(root: Path) -> str:
    return f"{_load(root, RESULTS / 'infinity2b_cpu_fp32_idle.json')['weights_bytes'] / 1e9:.1f} GB"


# ---- Evaluation (README) ----

def evaluation(root: Path) -> str:
    """Adherence of the shipped embedded model (the campaign ledger's evaluation of it) and its tokenizer."""
    shipped = shipped_embedded_evaluation(root)
    tokenizer = _load(root, RESULTS / "embedded_eval_tokenizer.json")["scores"]
    ns = ("1", "2", "3")
    counts = dict(zip(ns, shipped["scenes"]))
    return "\n".join([
        "| | 1 object | 2 objects | 3 objects |", "|---|---|---|---|",
        "| prompt adherence at the defaults (the campaign ledger's evaluation of the shipped model, "
        f"step {shipped['step']}) | "
        + " | ".join(f"{round(shipped['adherence'][n] * counts[n])} of {counts[n]}" for n in ns) + " |",
        "| tokenizer PSNR | " + " | ".join(f"{tokenizer[n]['psnr_db']:.1f} dB" for n in ns) + " |",
        "| the parser agrees with the ground truth on the tokenizer's reconstructions | "
        + " | ".join(f"{tokenizer[n]['accuracy']:.2f}" for n in ns) + " |",
    ])


# ---- The claims (README and docs/claims/README.md) ----

def _arms(records: list[dict], arm: str) -> list[dict]:
    return sorted((r for r in records if r["arm"] == arm and r["seed"] is not None), key=lambda r: r["seed"])


def _point(record: dict, k: int, p: float) -> dict:
    return next(q for q in record["metrics"]["recovery"] if q["k"] == k and q["p"] == p)


def _delta(record: dict, k: int, p: float) -> float:
    return _point(record, k, p)["psnr_db"] - _point(record, k, 0.0)["psnr_db"]


def _mean_sd(values: Sequence[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _per_seed(values: Sequence[float], digits: int) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def paired_t(differences: Sequence[float]) -> tuple[float, int, float]:
    """(t, degrees of freedom, two-sided p) of a paired t-test; p in closed form for 1 and 2 degrees of freedom."""
    n = len(differences)
    t = statistics.mean(differences) / (statistics.stdev(differences) / math.sqrt(n))
    dof = n - 1
    if dof == 1:
        p = 1 - 2 * math.atan(abs(t)) / math.pi
    elif dof == 2:
        p = 1 - abs(t) / math.sqrt(2 + t * t)
    else:
        raise ValueError("closed-form p only for 2 or 3 seeds")
    return t, dof, p


SC_K, SC_P, CLEAN_K = 2, 0.2, 3  # the recovery point the claims quote, and the scale of the clean-history PSNR


def _self_correction(records: list[dict]) -> dict:
    arms = sorted({r["arm"] for r in records if r["claim"] == "self-correction"},
                  key=lambda a: _arms(records, a)[0]["self_correction_strength"])
    out = {}
    for arm in arms:
        rs = _arms(records, arm)
        out[arm] = {"strength": rs[0]["self_correction_strength"], "seeds": [r["seed"] for r in rs],
                    "delta": [_delta(r, SC_K, SC_P) for r in rs],
                    "clean": [_point(r, CLEAN_K, 0.0)["psnr_db"] for r in rs],
                    "nats": [r["metrics"]["nats_per_bit"] for r in rs],
                    "free": [statistics.mean(r["metrics"]["attribute_recall_per_objects"]["1"].values()) for r in rs],
                    "extras": [r["metrics"]["extra_objects_per_objects"]["1"] for r in rs],
                    "adherence": [r["metrics"]["adherence_per_objects"]["1"] for r in rs]}
    return out


def _claims_tokenizer(records: list[dict]) -> dict:
    return next(r for r in records if r["claim"] == "tokenizer")["metrics"]


def _free_generation(sc: dict) -> tuple[str, str, str]:
    """Free generation on one-object scenes: each arm's attribute recall (mean ± sd over seeds), extra objects and
    adherence; per seed, whether each self-correction arm is ahead of strength 0 (higher recall, no more extra
    objects), behind (lower recall, no fewer) or mixed; and the verdict (ahead in every seed, behind in every seed,
    or neither). Recall alone would reward clutter: an image full of objects finds something in every cell."""
    arms = list(sc.values())
    base, rest = arms[0], arms[1:]
    measured = ", ".join(f"{_mean_sd(a['free'], 3)} ({'strength ' if j == 0 else ''}{a['strength']:g}; "
                         f"{statistics.mean(a['extras']):.1f} extra objects, adherence "
                         f"{statistics.mean(a['adherence']):.2f})" for j, a in enumerate(arms))
    outcomes, verdicts = [], []
    for a in rest:
        pairs = list(zip(a["free"], a["extras"], base["free"], base["extras"]))
        ahead = sum(r > r0 and x <= x0 for r, x, r0, x0 in pairs)
        behind = sum(r < r0 and x >= x0 for r, x, r0, x0 in pairs)
        n = len(a["free"])
        outcomes.append(f"strength {a['strength']:g} against 0: ahead in {ahead}, behind in {behind}, mixed in "
                        f"{n - ahead - behind} of {n} seeds")
        verdicts.append("reproduces" if ahead == n else "does not reproduce" if behind == n else "is not shown")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "is not shown"
    return measured, "; ".join(outcomes), verdict


def _head(records: list[dict]) -> dict:
    bits = next(a for a in {r["arm"] for r in records} if a.startswith("bits-d"))
    index = bits.replace("bits", "index")
    b, i = _arms(records, bits), _arms(records, index)
    if [r["seed"] for r in b] != [r["seed"] for r in i]:
        raise ValueError(f"{bits} and {index} were not run with the same seeds")
    gap = [x["metrics"]["nats_per_bit"] - y["metrics"]["nats_per_bit"] for x, y in zip(b, i)]
    sizes = {r["metrics"]["d"]: r["metrics"] for r in records if r["arm"] == "head-size"}
    return {
        "d": int(bits.split("-d")[1]), "bits": [r["metrics"]["nats_per_bit"] for r in b],
        "index": [r["metrics"]["nats_per_bit"] for r in i], "gap": gap, "t": paired_t(gap),
        "accuracy_bits_wins": all(x["metrics"]["bit_accuracy"] > y["metrics"]["bit_accuracy"] for x, y in zip(b, i)),
        "psnr_bits_wins": all(_point(x, CLEAN_K, 0.0)["psnr_db"] > _point(y, CLEAN_K, 0.0)["psnr_db"]
                              for x, y in zip(b, i)),
        "d16": sizes.get(16),
    }


def claims_summary(root: Path) -> str:
    records = _load(root, CLAIMS)
    sc, head, tok = _self_correction(records), _head(records), _claims_tokenizer(records)
    trained = [r["seconds"] for r in records if r["seed"] is not None]
    arms = list(sc.values())
    every_seed = all(all(a < b for a, b in zip(arms[0]["delta"], later["delta"])) for later in arms[1:])
    recovery = ", ".join(f"{_mean_sd(a['delta'], 1)} ({'strength ' if j == 0 else ''}{a['strength']:g})"
                         for j, a in enumerate(arms))
    clean = " / ".join(f"{statistics.mean(a['clean']):.2f}" for a in arms)
    nats = " / ".join(f"{statistics.mean(a['nats']):.3f}" for a in arms)
    free, ahead, free_verdict = _free_generation(sc)
    _, _, p = head["t"]
    won = " and ".join(w for w, ok in (("bit accuracy", head["accuracy_bits_wins"]),
                                        ("PSNR", head["psnr_bits_wins"])) if ok)
    size = head["d16"]
    size_text = (f"; at d = 16 the index head is {size['index_head_params'] / size['rest_of_model_params']:.1f}x "
                 "the rest of the model") if size else ""
    passed = tok["parser_pass"]
    return "\n".join([
        f"`python -m infinity.experiments claims` trains matched arms (`shapes-claims`: "
        f"64 px, five scales, a 1.7 M-parameter transformer, 600 steps of 16, {min(trained) / 60:.0f}-"
        f"{max(trained) / 60:.0f} min per arm on one shared core) and scores them on "
        f"{records[0]['metrics']['scenes']} held-out scenes, {len(arms[0]['seeds'])} seeds each "
        "([per seed, setup](docs/claims/README.md)):",
        "",
        "| claim | measured (mean ± sd) | here |",
        "|---|---|---|",
        f"| self-correction stops errors from accumulating | free generation, the model's own errors (no flips), "
        f"one-object scenes: attribute recall {free}; {ahead}. {SC_P:.0%} of scale {SC_K}'s true bits flipped "
        f"at random, the rest sampled: PSNR change {recovery} dB"
        f"{', in that order in every seed' if every_seed else ''}; nothing flipped: PSNR {clean} dB "
        f"(k = {CLEAN_K}), nats/bit {nats} | **{free_verdict} in free generation**; "
        f"{'reproduces' if every_seed else 'mixed'} for random flips, at a cost when none are |",
        f"| bits beat a softmax over 2^d | d = {head['d']}: nats/bit {_mean_sd(head['bits'], 3)} (bits), "
        f"{_mean_sd(head['index'], 3)} (index); index lower by {_per_seed(head['gap'], 3)} per seed (p = {p:.2f}, "
        f"paired t); bits higher in {won or 'neither'} in every seed{size_text} | "
        f"**not shown at d = {head['d']}**; the size argument holds |",
        "",
        f"The arms' tokenizer at {tok['pixels'][1]} px: the parser reads {passed['1']:.0%} of its clean "
        f"reconstructions of one-object scenes ({passed['2']:.0%} of two, {passed['3']:.0%} of three), so free "
        "generation is scored on one-object scenes. Bit depth is compared by the tokenizer campaign (the tokenizer "
        "table above), not here.",
    ])


def claims_findings(root: Path) -> str:
    """docs/claims/README.md's 'What it shows', per seed."""
    records = _load(root, CLAIMS)
    sc, head, tok = _self_correction(records), _head(records), _claims_tokenizer(records)
    t, dof, p = head["t"]
    _, ahead, verdict = _free_generation(sc)
    seeds = ", ".join(map(str, next(iter(sc.values()))["seeds"]))
    lines = [f"- **Self-correction, in free generation.** Each model samples every scale itself, no flips injected "
             f"(cfg 3, tau 1). On the held-out one-object scenes, per seed ({seeds}): the attribute recall (the "
             "share of colour, shape, size and position found right in the object's cell, averaged), the objects "
             "drawn beyond the one asked for, and the adherence (all right, nothing else):"]
    for a in sc.values():
        lines.append(f"  strength {a['strength']:g}: recall {_per_seed(a['free'], 3)}, extra objects "
                     f"{_per_seed(a['extras'], 1)}, adherence {_per_seed(a['adherence'], 2)};")
    lines.append(f"  {ahead[0].upper()}{ahead[1:]}: the claim, measured on the model's own errors, {verdict} here.")
    lines.append(f"  The parser reads {tok['parser_pass']['1']:.0%} of the tokenizer's own clean reconstructions of "
                 "these scenes: that is the ceiling of any arm.")
    lines.append(f"- **Self-correction, for random flips.** With {SC_P:.0%} of scale {SC_K}'s true bits flipped at "
                 "random and the rest sampled, the PSNR each model loses against its own result with nothing flipped, "
                 f"per seed ({seeds}):")
    for arm, a in sc.items():
        lines.append(f"  strength {a['strength']:g}: {_per_seed(a['delta'], 2)} dB "
                     f"(mean {_mean_sd(a['delta'], 2)});")
    lines.append("  The cost, with nothing flipped: PSNR at k = 3 " + "; ".join(
        f"{_per_seed(a['clean'], 2)} dB (strength {a['strength']:g})" for a in sc.values())
        + ", and held-out nats per bit on clean histories " + " / ".join(
        f"{statistics.mean(a['nats']):.3f}" for a in sc.values()) + ".")
    lines.append(f"- **Bits against indices, at d = {head['d']}.** Held-out nats per bit, bits "
                 f"{_per_seed(head['bits'], 3)}, index {_per_seed(head['index'], 3)}: the index head lower by "
                 f"{_per_seed(head['gap'], 3)} (paired t = {t:.1f}, {dof} dof, p = {p:.2f}: not significant with "
                 f"{dof + 1} seeds). The bitwise head has the higher bit accuracy "
                 f"{'in every seed' if head['accuracy_bits_wins'] else 'in some seeds only'} and the higher PSNR "
                 f"{'in every seed' if head['psnr_bits_wins'] else 'in some seeds only'}. The bitwise head's case is "
                 "size: the size table shows the index head outgrowing the whole model from d = 16 on.")
    lines.append("- **Bit depth** is compared by the tokenizer campaign ([tokenizers.md](../tokenizers.md)), where "
                 "d = 8, 16 and 32 train the same way for the same steps; the claims run has no bit-depth arms.")
    return "\n".join(lines)


def pair_tokenizer(root: Path) -> str:
    q = _load(root, "assets/self-correction/pair.json")["tokenizer_on_heldout"]
    return f"{q['psnr_db']:.1f} dB, and the parser reads {100 * q['parser_pass']:.1f} %"


def embedded_tokenizer_one_object(root: Path) -> str:
    s = _load(root, RESULTS / "embedded_eval_tokenizer.json")["scores"]["1"]
    return f"{s['psnr_db']:.1f} dB, {s['accuracy']:.2f} of one-object scenes"


def claims_cost(root: Path) -> str:
    records = _load(root, CLAIMS)
    arms = [r for r in records if r["seed"] is not None]
    return (f"{len(arms)} arms {sum(r['seconds'] for r in arms):,.0f} s, scoring "
            f"{sum(r['metrics']['eval_seconds'] for r in arms):,.0f} s")


def _tokenizer_name(path: str) -> str:
    """`assets/tokenizers/general-d16.safetensors` -> general-d16; a model folder's tokenizer -> the folder's name."""
    p = Path(path)
    return f"{p.parent.name} (its model's tokenizer)" if p.stem == "tokenizer" else p.stem


def tokenizer_codecs(root: Path) -> str:
    """The tokenizers beside JPEG (at each tokenizer's final-scale bits and at all the bits its decoder needs) and
    a thumbnail, on the held-out photos and shapes scenes (`python -m infinity.eval tokenizer`)."""
    results = _load(root, RESULTS / "tokenizers_heldout.json")
    records = results["records"]
    budgets: dict[int, list[str]] = {}
    for r in records:
        if r["kind"] == "tokenizer":
            name = _tokenizer_name(r["name"])
            budgets.setdefault(int(r["bits_final_scale"]), []).append(f"{name} final scale")
            if r.get("bits_all_scales"):
                budgets.setdefault(int(r["bits_all_scales"]), []).append(f"{name} all scales")
    lines = ["| codec | bits per image | PSNR photos (mean / pooled) | shapes: parser agreement 1/2/3 |",
             "|---|---|---|---|"]
    for r in records:
        shapes = " / ".join(f"{r['shapes'][n]['parser_agreement']:.2f}" if n in r["shapes"] else "-"
                            for n in ("1", "2", "3"))
        if r["kind"] == "tokenizer":
            name = _tokenizer_name(r["name"])
            bits = f"{r['bits_all_scales']:,} all scales ({int(r['bits_final_scale']):,} final)"
        elif r["kind"] == "jpeg":
            name = f"JPEG <= {r['budget_bits']:,} bits (= {', '.join(budgets.get(r['budget_bits'], []))})"
            bits = f"{r['bits_final_scale']:,.0f} (file)"
        else:
            name, bits = r["name"], f"{r['bits_final_scale']:,.0f}"
        lines.append(f"| {name} | {bits} | {r['psnr_db']:.2f} / {r['psnr_pooled_db']:.2f} dB | {shapes} |")
    deepest = max((r for r in records if r["kind"] == "tokenizer"), key=lambda r: r["bits_per_token"])
    jpeg = next((r for r in records if r["kind"] == "jpeg" and r["budget_bits"] == deepest["bits_all_scales"]), None)
    info = results["images"]
    if jpeg is not None:
        gap = jpeg["psnr_db"] - deepest["psnr_db"]
        lines += ["", f"The deepest, {_tokenizer_name(deepest['name'])}, is {gap:.2f} dB under JPEG at its total bits "
                  f"(target: within 2 dB, {'met' if gap <= 2 else 'not met'})."]
    lines += ["", f"{info['used']} held-out photos of `{info['folder']}` at {info['size']}x{info['size']} "
              f"({len(info['one_colour'])} of one colour skipped); {results['shapes_per_object_count']} shapes scenes "
              "per object count."]
    return "\n".join(lines)


def tokenizer_recipe_ab(root: Path) -> str:
    """Held-out PSNR of d16 per CPU-second: progressive resolution against the model's sizes throughout."""
    ab = _load(root, RESULTS / "tokenizer_recipe_ab.json")
    lines = ["| recipe | steps of 16 | CPU seconds | held-out PSNR |", "|---|---|---|---|"]
    for point in sorted(ab["points"], key=lambda q: (q["arm"], q["step"])):
        lines.append(f"| {point['arm']} | {point['step']} | {point['cpu_s']:,.0f} | {point['psnr_db']:.2f} dB |")
    return "\n".join(lines)


def embedded_recipe_ab(root: Path) -> str:
    """The embedded transformer's recipes from the same start, per CPU-second (benchmarks/embedded_recipe_ab.py)."""
    ab = _load(root, RESULTS / "embedded_recipe_ab.json")
    lines = ["| recipe | steps of 16 | CPU seconds | object-bit error, scales 3-5 (1 / 2 / 3 objects) | "
             f"last scale (1 / 2 / 3) | adherence (1 / 2 / 3) | open prompts over {VISIBLE_DIFFERENCE:g}/255 |",
             "|---|---|---|---|---|---|---|"]

    def row(name: str, steps: int, cpu_s: float, scores: dict) -> str:
        forced = scores["teacher_forced_object_bit_error"]
        return (f"| {name} | {steps} | {cpu_s:,.0f} | "
                + " / ".join(f"{forced[n]['scales_3_to_5']:.3f}" for n in ("1", "2", "3")) + " | "
                + " / ".join(f"{forced[n]['last_scale']:.3f}" for n in ("1", "2", "3")) + " | "
                + " / ".join(f"{scores['adherence'][n]:.2f}" for n in ("1", "2", "3"))
                + f" | {scores['prompts_over_spread_target']} of {scores['open_prompts']} |")

    lines.append(row(f"start (step {ab['start_step']})", 0, 0, ab["start_scores"]))
    for arm in ab["arms"]:
        lines.append(row(arm["arm"], arm["step"] - ab["start_step"], arm["cpu_s"], arm))
    return "\n".join(lines)


def embedded_recipe_ab_verdict(root: Path) -> str:
    """Which arm of the embedded recipe comparison did better on what, computed from its file."""
    ab = _load(root, RESULTS / "embedded_recipe_ab.json")
    base, other = ab["arms"][0], ab["arms"][1]

    def per_cpu(arm: dict, n: str, key: str) -> float:  # improvement over the start per CPU-hour
        start = ab["start_scores"]["teacher_forced_object_bit_error"][n][key]
        return (start - arm["teacher_forced_object_bit_error"][n][key]) / arm["cpu_s"] * 3600

    parts = []
    for n in ("2", "3"):
        for key, label in (("scales_3_to_5", "scales 3 to 5"), ("last_scale", "the last scale")):
            a, b = per_cpu(base, n, key), per_cpu(other, n, key)
            better = other["arm"] if b > a else base["arm"]
            parts.append(f"{n} objects at {label}: {better} ({base['arm']} {a:+.4f}, {other['arm']} {b:+.4f})")
    adherence = {arm["arm"]: arm["adherence_sum"] for arm in (base, other)}
    best = max(adherence, key=adherence.get)
    start = ab["start_scores"]["teacher_forced_object_bit_error"]
    ratio = start["2"]["scales_3_to_5"] / start["1"]["scales_3_to_5"]
    return (f"At the start, two objects have {ratio:.1f}x the object-bit error of one at scales 3 to 5. Error removed "
            "per CPU-hour, by the arm that removed more (both figures in brackets): " + "; ".join(parts)
            + ". Adherence summed over 1, 2 "
            "and 3 objects: " + ", ".join(f"{k} {v:.2f}" for k, v in adherence.items()) + f". Kept: the {best} "
            "recipe, the one with the higher adherence.")


def tokenizer_speck(root: Path) -> str:
    """The decoders' own specks: what an all-zero latent decodes to (benchmarks/tokenizer_speck.py)."""
    result = _load(root, RESULTS / "tokenizer_speck.json")
    lines = ["| tokenizer | pixels > 32/255 off the median | farthest | at (row, col) | largest GroupNorm input / mean "
             "| at (row, col) |", "|---|---|---|---|---|---|"]
    for t in result["tokenizers"]:
        peak = max(t["norms"], key=lambda n: n["peak_over_mean"])
        lines.append(f"| {_tokenizer_name(t['tokenizer'])} | {t['output_pixels_over_32']} | "
                     f"{t['output_max_deviation_0_255']:.0f}/255 | {t['output_at'][0]}, {t['output_at'][1]} | "
                     f"{peak['peak_over_mean']:.0f}x ({peak['norm']}) | {peak['at'][0]}, {peak['at'][1]} |")
    return "\n".join(lines)


def tokenizer_colours(root: Path) -> str:
    """Each tokenizer's colour difference on the app's examples' coloured regions (benchmarks/tokenizer_colours.py)."""
    result = _load(root, RESULTS / "tokenizer_colours.json")
    regions = list(dict.fromkeys(r["region"] for r in result["results"]))
    rows = {}
    for r in result["results"]:
        rows.setdefault(r["tokenizer"], {})[r["region"]] = r

    def rgb(c: list[float]) -> str:
        return "(" + ", ".join(f"{v:.0f}" for v in c) + ")"

    def cell(r: dict) -> str:
        return (f"{r['delta_e76']:.1f} {'kept' if r['kept'] else '**not kept**'}: {rgb(r['input_rgb'])} -> "
                f"{rgb(r['reconstruction_rgb'])}")

    lines = ["| tokenizer | " + " | ".join(regions) + " |", "|---|" + "---|" * len(regions)]
    lines += [f"| {name} | " + " | ".join(cell(by[region]) for region in regions) + " |" for name, by in rows.items()]
    kept = {region: [name for name, by in rows.items() if by[region]["kept"]] for region in regions}
    lines += ["", f"CIE76 colour difference of each region's mean colour, input -> reconstruction (RGB); kept: at most "
              f"{result['kept_delta_e76']:g}. " + "; ".join(f"{region}: kept by {', '.join(names) or 'none'}"
                                                              for region, names in kept.items()) + "."]
    return "\n".join(lines)


def embedded_cfg_schedules(root: Path) -> str:
    """Per-scale CFG schedules tried on the shipped model: adherence and seed spread of each."""
    runs = _load(root, RESULTS / "embedded_cfg_schedules.json")["runs"]
    return "; ".join(f"cfg per scale {' / '.join(f'{c:g}' for c in r['defaults']['cfg_schedule'])}: adherence "
                     f"{r['adherence']['1']:.2f} / {r['adherence']['2']:.2f} / {r['adherence']['3']:.2f}, "
                     f"{r['prompts_over_spread_target']} of {r['open_prompts']} open prompts over "
                     f"{VISIBLE_DIFFERENCE:g}/255" for r in runs)


def embedded_first_scale(root: Path) -> str:
    """Why seeds barely change an open background: the first scale's codes and the model's bits there
    (benchmarks/embedded_first_scale.py)."""
    r = _load(root, RESULTS / "embedded_first_scale.json")
    codes, groups, prompts = r["first_scale_codes"], r["code_groups"], r["prompts"]
    shared = "; ".join(f"{g.replace('/', ' and ')} share one code" for g in groups if "/" in g)
    apart = ", ".join(f"{k.replace('-', ' and ')} {v}" for k, v in r["hamming"].items() if v)
    p_off = statistics.mean(p["mean_p_distance_from_half"] for p in prompts)
    complementary = len(groups) == 2 and all(v in (0, r["bits"]) for v in r["hamming"].values())
    expected = abs(len(groups[0].split("/")) / len(codes) - 0.5)  # two complementary codes: p = a group's share
    learned = (f" (a model that had learned the training shares would put them {expected:.2f} from 1/2: the two "
               "codes are each other's complement)") if complementary else ""
    hamming = statistics.mean(p["draws_hamming_to_nearest_code_mean"] for p in prompts)
    exact = ", ".join(f"10^{max(p['log10_p_exact_code'][g] for p in prompts):.1f} for {g}" for g in groups)
    free = r["free_backgrounds_pooled"]
    shares = ", ".join(f"{name} {free.get(name, 0)}" for name in sorted(codes))
    given = []
    for g in groups:
        outcome = {}
        for p in prompts:
            for name in g.split("/"):
                for bg, n in p["given_first_code_backgrounds"][name].items():
                    outcome[bg] = outcome.get(bg, 0) + n
        given.append(f"the {g} code: " + ", ".join(f"{bg} {n}" for bg, n in sorted(outcome.items())))
    seeds = r["given_code_images"] // (len(codes) * len(prompts))
    return (f"The first scale is one token of {r['bits']} bits. The tokenizer's codes there for plain images: "
            f"{shared + '; ' if shared else ''}bits apart: {apart}. For {len(prompts)} held-out prompts that leave the "
            f"background open, the model's p(bit = 1) there lies on average {p_off:.2f} from 1/2{learned}; bits drawn "
            f"independently from those p land {hamming:.1f} bits from the nearest code on average, and hit a code "
            f"exactly with probability at most {exact}. Over {r['seeds']} seeds per prompt the parser reads {shares} "
            f"of {sum(free.values())} backgrounds (training: equal shares). With the first scale given a background's "
            f"true code ({seeds} seeds per prompt and background), the images come out: " + "; ".join(given) + ".")


def embedded_anneal(root: Path) -> str:
    """A decay branch of the embedded campaign against the campaign's row it started from."""
    result = _load(root, RESULTS / "embedded_anneal.json")
    rows = read_rows(ledger_path("embedded", root))
    start = next(r for r in rows if r.get("kind") == "evaluation" and r["step"] == result["start_step"]
                 and r["weights"] != "shipped")
    end = result["runs"][0]

    def counts(r: dict, key: str, fmt: str) -> str:
        return " / ".join(format(r[key][n], fmt) for n in ("1", "2", "3"))

    forced = "teacher_forced_last_scale_object_bit_error"
    return (f"{result['steps']} steps from the campaign's step-{result['start_step']} weights with the learning rate "
            f"decayed to near zero ({result['trainer_wall_s'] / 60:.0f} min on one core): the teacher-forced "
            f"last-scale object error for 1 / 2 / 3 objects went {counts(start, forced, '.3f')} -> "
            f"{counts(end, forced, '.3f')}, adherence "
            f"{counts(start, 'adherence', '.2f')} -> {counts(end, 'adherence', '.2f')}, open prompts over "
            f"{VISIBLE_DIFFERENCE:g}/255 "
            f"{start['prompts_over_spread_target']} -> {end['prompts_over_spread_target']} of {end['open_prompts']}")


def embedded_tokenizer_scales(root: Path) -> str:
    """What F_k of the embedded tokenizer shows of a scene after each scale, against the image averaged to that
    scale's grid (benchmarks/embedded_tokenizer_scales.py)."""
    result = _load(root, RESULTS / "embedded_tokenizer_scales.json")
    counts = ("1", "2", "3")

    def per_count(values: dict) -> str:
        return " / ".join(f"{values[n]:.2f}" for n in counts)

    lines = ["| scale (grid) | tokens so far | objects readable by colour, tokenizer (1 / 2 / 3 objects) "
             "| the same, image averaged to the grid | parser: objects in their cell | parser pass rate |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scale']} ({r['grid'][0]}x{r['grid'][1]}) | {r['tokens_so_far']} "
                     f"| {per_count(r['colour_readable'])} | {per_count(r['colour_readable_grid_average'])} "
                     f"| {per_count({n: r['scores'][n]['position'] for n in counts})} "
                     f"| {per_count({n: r['scores'][n]['accuracy'] for n in counts})} |")
    gaps = [statistics.mean(r["colour_readable"][n] - r["colour_readable_grid_average"][n] for n in counts)
            for r in result["rows"]]
    half = next(r for r in result["rows"] if min(r["colour_readable"].values()) >= 0.5)
    lines += ["", f"Readable share, the tokenizer's decode minus the image averaged to the same grid (mean over the "
              f"counts): from {min(gaps):+.2f} to {max(gaps):+.2f} across the scales. Half of the objects or more "
              f"first show their colour at scale {half['scale']} ({half['grid'][0]}x{half['grid'][1]}), after "
              f"{half['tokens_so_far']} of {result['rows'][-1]['tokens_so_far']} tokens."]
    return "\n".join(lines)


def embedded_fp16_drift(root: Path) -> str:
    drift = _load(root, RESULTS / "embedded_fp16_drift.json")["image_difference_fp16_vs_fp32"]
    return (f"{drift['mean_abs_0_255']:.3f}/255 on average (at most {drift['max_abs_mean_0_255']:.3f}/255 on one of "
            f"{drift['prompts']} prompts)")


def tokenize_example(root: Path) -> str:
    """The README's `tokenize` example: PSNR after the first and the last scale (its psnr.json)."""
    rows = _load(root, RESULTS / "embedded_tokenize_scene.json")
    first, last = rows[0], rows[-1]
    return f"{first['psnr_db']:.1f} dB after scale {first['scale']}, {last['psnr_db']:.1f} after {last['scale']}"


def claims_resolution(root: Path) -> str:
    """The embedded tokenizer's parser pass rate at several claims resolutions (benchmarks/claims_resolution.py)."""
    result = _load(root, RESULTS / "claims_resolution.json")
    rows = result["rows"]
    base = rows[0]
    lines = ["| size | scales | tokens per image | parser, held-out 1 / 2 / 3 objects | PSNR, 1 object |",
             "|---|---|---|---|---|"]
    for r in rows:
        passes = " / ".join(f"{r['parser_pass'][n]:.2f}" for n in ("1", "2", "3"))
        lines.append(f"| {r['pixels']} px | {len(r['scales'])} | {r['tokens']} ({r['tokens'] / base['tokens']:.1f}x) "
                     f"| {passes} | {r['psnr_db']['1']:.1f} dB |")
    reached = [r for r in rows if r["parser_pass"]["1"] >= 0.9]
    sizes = ", ".join(f"{r['pixels']} px" for r in reached)
    lines.append("")
    lines.append(f"The one-object target (>= 0.9) is reached by this tokenizer as it is at {sizes}, with "
                 f"{reached[0]['tokens'] / base['tokens']:.1f}x the tokens of the {base['pixels']} px arms."
                 if reached else "The one-object target (>= 0.9) is reached at none of these sizes.")
    return "\n".join(lines)


def claims_tokenizer_curve(root: Path) -> str:
    """The 64 px claims tokenizer's parser pass rate along its training, and what its one-object failures are
    (benchmarks/claims_tokenizer_curve.py)."""
    return _tokenizer_curve(_load(root, RESULTS / "claims_tokenizer_curve.json"))


def claims_tokenizer_curve_96(root: Path) -> str:
    """The same for a claims tokenizer at 96 px (`--recipe shapes-claims-96`)."""
    return _tokenizer_curve(_load(root, RESULTS / "claims_tokenizer_curve_96.json"))


def _tokenizer_curve(result: dict) -> str:
    lines = ["| tokenizer | parser, held-out 1 / 2 / 3 objects | PSNR, 1 object | parser, 200 training-stream objects "
             "| their failures |", "|---|---|---|---|---|"]
    for t in result["tokenizers"]:
        passed = t["heldout_parser_pass"]
        failures = ", ".join(f"{kind} {n}" for kind, n in t["train_one_object_failures"].items())
        lines.append(f"| {t['label']} | {passed['1']:.2f} / {passed['2']:.2f} / {passed['3']:.2f} | "
                     f"{t['heldout_psnr_db']['1']:.1f} dB | {t['train_one_object_pass']:.2f} | {failures} |")
    best = max(result["tokenizers"], key=lambda t: t["heldout_parser_pass"]["1"])
    fails = best["train_one_object_failures"]
    shape = sum(n for kind, n in fails.items() if "shape" in kind)
    met = "met" if best["heldout_parser_pass"]["1"] >= result["target_one_object"] else "not met"
    lines.append("")
    lines.append(f"The parser reads {result['parser_on_ground_truth']:.0%} of the ground-truth renders at "
                 f"{result['pixels'][0]} px. Target, one held-out object read >= {result['target_one_object']}: "
                 f"{met} (best: {best['heldout_parser_pass']['1']:.2f}, {best['label']}); {shape} of its "
                 f"{sum(fails.values())} failures on the training-stream objects have a wrong shape.")
    return "\n".join(lines)


GENERATORS: dict[str, Generator] = {
    "tokenize-example": tokenize_example, "embedded-cfg-schedules": embedded_cfg_schedules,
    "embedded-recipe-ab": embedded_recipe_ab, "embedded-recipe-ab-verdict": embedded_recipe_ab_verdict,
    "tokenizer-speck": tokenizer_speck, "tokenizer-colours": tokenizer_colours,
    "tokenizer-recipe-ab": tokenizer_recipe_ab,
    "performance-summary": performance_summary,
    "performance-page": performance_page, "space-125m": space_125m, "embedded-fp16-drift": embedded_fp16_drift,
    "embedded-first-scale": embedded_first_scale, "embedded-anneal": embedded_anneal,
    "embedded-tokenizer-scales": embedded_tokenizer_scales,
    "tokenizer-codecs": tokenizer_codecs, "ledger-tokenizers": tokenizers_table,
    "ledger-tokenizers-progress": tokenizers_progress, "ledger-embedded": embedded_table,
    "matmul-peak": matmul_peak, "weights-2b": weights_2b, "evaluation": evaluation,
    "claims-summary": claims_summary, "claims-findings": claims_findings, "pair-tokenizer": pair_tokenizer,
    "embedded-tokenizer": embedded_tokenizer_one_object, "claims-cost": claims_cost,
    "claims-tokenizer-curve": claims_tokenizer_curve, "claims-tokenizer-curve-96": claims_tokenizer_curve_96,
    "claims-resolution": claims_resolution,
}
