"""Markdown tables built from the campaigns' ledgers (`python -m infinity.report` writes them into the pages)."""
from __future__ import annotations

import statistics
from pathlib import Path

from ..eval.diversity import VISIBLE_DIFFERENCE
from .ledger import ledger_path, read_rows


def _evaluations(rows: list[dict], run: str) -> list[dict]:
    return [r for r in rows if r.get("run") == run and r.get("kind") == "evaluation"]


def _cpu_hours(rows: list[dict], run: str, step: int) -> float:
    segments = [r for r in rows if r.get("run") == run and r.get("kind") == "segment" and r["step"] <= step]
    return sum(r.get("cpu_s") or 0.0 for r in segments) / 3600


def tokenizers_table(root: str | Path = ".") -> str:
    """Per depth: the shipped weights (the best evaluation), and the latest evaluation when it did not ship."""
    rows = read_rows(ledger_path("tokenizers", root))
    lines = ["| tokenizer | weights | step | images seen | campaign CPU-hours | held-out PSNR mean | pooled |",
             "|---|---|---|---|---|---|---|"]
    for run in sorted({r["run"] for r in rows}, key=lambda n: int(n.rsplit("d", 1)[1])):
        evaluations = _evaluations(rows, run)
        if not evaluations:
            continue
        shipped = [r for r in evaluations if r.get("shipped")] or [r for r in evaluations if r["weights"] == "shipped"]
        shown = [(shipped[-1], "shipped")]
        if evaluations[-1] is not shipped[-1]:
            shown.append((evaluations[-1], "latest, not shipped"))
        for r, what in shown:
            hours = _cpu_hours(rows, run, r["step"])
            lines.append(f"| {run} | {what} | {r['step']} | {r['images_seen']:,} | {hours:.2f} "
                         f"| {r['psnr_db']:.2f} dB | {r['psnr_pooled_db']:.2f} dB |")
    heldout = next((r for r in reversed(rows) if r.get("kind") == "evaluation"), None)
    if heldout:
        lines.append("")
        lines.append(f"Held-out: {heldout['heldout_images']} photographs of `{heldout['heldout']}` at "
                     f"128x128, weights rounded to fp16 as shipped; steps of batch 16. {_tokenizer_targets(rows)}")
    return "\n".join(lines)


D16_TARGET_DB, STEP_TARGET_DB = 22.0, 0.5  # the targets: d16 on held-out photos, the gain per doubling of d
APP_PHOTO_TARGET_DB = 20.0  # the target: the app's photograph reconstructed before any flip


def _tokenizer_targets(rows: list[dict]) -> str:
    """The targets at the last step where all three depths were scored (the point the bit-depth comparison uses),
    met or not, computed from the rows."""
    runs = ("general-d8", "general-d16", "general-d32")
    scored = {run: {r["step"]: r["psnr_db"] for r in _evaluations(rows, run)} for run in runs}
    photo = {run: {r["step"]: r for r in _evaluations(rows, run) if "app_photo_psnr_db" in r} for run in runs}
    common = set.intersection(*(set(v) for v in scored.values()))
    if not common:
        return ""
    step = max(common)
    d8, d16, d32 = (scored[run][step] for run in runs)
    rising = d16 - d8 >= STEP_TARGET_DB and d32 - d16 >= STEP_TARGET_DB
    return (f"At step {step}, where all three were scored: d16 >= {D16_TARGET_DB:g} dB "
            f"{'met' if d16 >= D16_TARGET_DB else 'not met'} ({d16:.2f} dB); PSNR rising by >= {STEP_TARGET_DB:g} dB "
            f"per doubling of d {'met' if rising else 'not met'} ({d16 - d8:+.2f} dB from d8 to d16, "
            f"{d32 - d16:+.2f} dB from d16 to d32).{_app_photo_target(photo)}")


def _app_photo_target(photo: dict[str, dict[int, dict]]) -> str:
    """The app's photograph at the last step where every depth's evaluation scored it (empty before any did)."""
    common = set.intersection(*(set(v) for v in photo.values()))
    if not common:
        return ""
    step = max(common)
    scores = {run: photo[run][step]["app_photo_psnr_db"] for run in photo}
    best = max(scores, key=scores.get)
    name = photo[best][step]["app_photo"]
    return (f" The app's photograph (`{name}`, held out) >= {APP_PHOTO_TARGET_DB:g} dB before any flip, at step "
            f"{step}: {'met' if scores[best] >= APP_PHOTO_TARGET_DB else 'not met'} (best {best} "
            f"{scores[best]:.2f} dB; " + ", ".join(f"{run} {v:.2f}" for run, v in scores.items()) + ").")


def shipped_embedded_evaluation(root: str | Path = ".") -> dict:
    """The ledger's evaluation of the embedded model as shipped now: the last that shipped, else the first (the
    model shipped before the campaign)."""
    evaluations = _evaluations(read_rows(ledger_path("embedded", root)), "embedded-transformer")
    if not evaluations:
        raise ValueError("the embedded ledger has no evaluation yet")
    shipped = [r for r in evaluations if r.get("shipped")]
    return shipped[-1] if shipped else evaluations[0]


ADHERENCE_TARGETS = {"1": 0.9, "2": 0.6, "3": 0.3}
SPREAD_PROMPTS_TARGET = 5  # of 6 open prompts at >= VISIBLE_DIFFERENCE


def _embedded_targets(r: dict) -> str:
    """The issue's targets against the shipped model's evaluation, met or not."""
    parts = [f"{n} object{'s' * (n != '1')} >= {t:g}: {'met' if r['adherence'][n] >= t else 'not met'} "
             f"({r['adherence'][n]:.2f})" for n, t in ADHERENCE_TARGETS.items()]
    spread_met = r["prompts_over_spread_target"] >= SPREAD_PROMPTS_TARGET
    parts.append(f"seeds differing by >= {VISIBLE_DIFFERENCE:g}/255 on >= {SPREAD_PROMPTS_TARGET} of "
                 f"{r['open_prompts']} open prompts: "
                 f"{'met' if spread_met else 'not met'} ({r['prompts_over_spread_target']})")
    return "Targets, for the shipped model: " + "; ".join(parts) + "."


def _per_count(values: dict | None, fmt: str) -> str:
    return " / ".join(fmt.format(values[n]) for n in ("1", "2", "3") if n in values) if values else "-"


def embedded_table(root: str | Path = ".") -> str:
    rows = read_rows(ledger_path("embedded", root))
    lines = ["| weights | step | campaign images | campaign CPU-hours | 1 object | 2 objects | 3 objects "
             "| failed only by extras, 1/2/3 | teacher-forced error, 1/2/3 | seed spread (mean, /255) "
             f"| open prompts >= {VISIBLE_DIFFERENCE:g}/255 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    evaluations = _evaluations(rows, "embedded-transformer")
    for r in evaluations:
        what = ("shipped before the campaign" if r["weights"] == "shipped"
                else "shipped" if r["shipped"] else "not shipped")
        a = r["adherence"]
        hours = _cpu_hours(rows, "embedded-transformer", r["step"])
        lines.append(f"| {what} | {r['step']} | {r.get('images_seen', 0):,} | {hours:.2f} "
                     f"| {a.get('1', 0):.2f} | {a.get('2', 0):.2f} | {a.get('3', 0):.2f} "
                     f"| {_per_count(r.get('failed_only_by_extras'), '{}')} "
                     f"| {_per_count(r.get('teacher_forced_last_scale_object_bit_error'), '{:.3f}')} "
                     f"| {r['seed_spread_mean']:.1f} "
                     f"| {r['prompts_over_spread_target']} of {r['open_prompts']} |")
    if evaluations:
        r = evaluations[-1]
        lines.append("")
        lines.append(f"Held-out scenes: {r['scenes'][0]} / {r['scenes'][1]} / {r['scenes'][2]} of 1 / 2 / 3 objects at "
                     f"the defaults; seed spread over {r['seeds']} seeds of {r['open_prompts']} prompts that leave the "
                     "background open; teacher-forced error: the share of the last scale's object-token bits "
                     "wrong given the true earlier scales. " + _embedded_targets(shipped_embedded_evaluation(root))
                     + _embedded_trend(rows, evaluations))
    return "\n".join(lines)


TREND_EVALUATIONS, TREND_HOURS = 10, 3.0  # the fit's last evaluations; the hours it is carried forward


def _embedded_trend(rows: list[dict], evaluations: list[dict]) -> str:
    """What TREND_HOURS more CPU-hours of the campaign would buy at the rates of its last evaluations (a straight
    line fitted to each figure against the campaign's CPU-hours)."""
    recent = [r for r in evaluations if r["weights"] != "shipped"][-TREND_EVALUATIONS:]
    if len(recent) < 3:
        return ""
    hours = [_cpu_hours(rows, "embedded-transformer", r["step"]) for r in recent]
    counts = ("1", "2", "3")
    parts = []
    for key, fmt, what in (("teacher_forced_last_scale_object_bit_error", "{:.3f}", "teacher-forced error"),
                           ("adherence", "{:.2f}", "adherence")):
        slopes = [statistics.linear_regression(hours, [r[key][n] for r in recent]).slope for n in counts]
        later = [min(1.0, max(0.0, recent[-1][key][n] + TREND_HOURS * k)) for n, k in zip(counts, slopes)]
        parts.append(f"{what} {' / '.join(f'{k:+.3f}' for k in slopes)} per CPU-hour, so "
                     f"{' / '.join(fmt.format(v) for v in later)} after {TREND_HOURS:g} more")
    return (f" At the rates of its last {len(recent)} evaluations (steps {recent[0]['step']} to {recent[-1]['step']}, "
            f"{hours[-1] - hours[0]:.2f} CPU-hours apart; a straight line fitted to each figure, 1 / 2 / 3 objects): "
            + "; ".join(parts) + ".")


TABLES = {"tokenizers": tokenizers_table, "embedded": embedded_table}



def tokenizers_progress(root: str | Path = ".") -> str:
    """Per depth, the held-out PSNR at every scored step and the CPU seconds per segment: the curve so far, then
    what one more core-hour buys at that cost."""
    rows = read_rows(ledger_path("tokenizers", root))
    runs = ("general-d8", "general-d16", "general-d32")
    scored = {run: {r["step"]: r["psnr_db"] for r in _evaluations(rows, run)} for run in runs}
    lines = ["| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for step in sorted(set().union(*scored.values())):
        lines.append(f"| {step} | " + " | ".join(f"{scored[run][step]:.2f} dB" if step in scored[run] else "-"
                                                 for run in runs) + " |")
    per_100 = []
    for run in runs:
        segments = [r for r in rows if r.get("run") == run and r.get("kind") == "segment" and r.get("cpu_s")]
        per_100.append(sum(r["cpu_s"] for r in segments) / sum(r["step"] - r["step_from"] for r in segments) * 100)
    lines.append("| CPU s per 100 steps | " + " | ".join(f"{c:.0f}" for c in per_100) + " |")
    mean = sum(per_100) / len(per_100)
    gains = []
    for run in runs:
        steps = sorted(scored[run])
        if len(steps) >= 2:
            gains.append(f"{run} {scored[run][steps[-1]] - scored[run][steps[-2]]:+.2f} dB "
                         f"({steps[-2]} -> {steps[-1]})")
    lines += ["", f"The last evaluation's gains: {', '.join(gains)}. At {mean:.0f} CPU seconds per 100 steps, one "
              f"core-hour brings all three depths {3600 / mean / len(runs) * 100:,.0f} steps further."]
    return "\n".join(lines)
