"""The claims experiment's outputs: results.json (every record), results.md (tables, means and spreads over seeds)
and recovery.png (PSNR against the flipped fraction p, one line per self-correction arm, one panel per scale k),
drawn with Pillow. Every figure in them is computed from the records."""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _spread(values: Sequence[float]) -> str:
    """mean ± sample standard deviation (mean alone for one value)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _arms(records: Sequence[dict], claim: str) -> dict[str, list[dict]]:
    """Trained arms of a claim, in first-seen order: name -> the records of its seeds."""
    out: dict[str, list[dict]] = {}
    for r in records:
        if r["claim"] == claim and r["seed"] is not None:
            out.setdefault(r["arm"], []).append(r)
    return out


def _recovery(record: dict) -> dict[tuple[int, float], dict]:
    return {(p["k"], p["p"]): p for p in record["metrics"]["recovery"]}


def arm_table(records: Sequence[dict], claim: str) -> list[str]:
    groups = _arms(records, claim)
    if not groups:
        return [f"No {claim} arm was run."]
    points = sorted(_recovery(next(iter(groups.values()))[0]))
    drops = [(k, p) for k, p in points if p > 0]
    header = ["arm", "seeds", "steps", "train s (mean)", "held-out nats/bit", "bit accuracy", "adherence"]
    bases = [(k, p) for k, p in points if p == 0]
    header += [f"PSNR k={k} p=0 (dB)" for k, _ in bases] + [f"ΔPSNR k={k} p={p:g}" for k, p in drops]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rs in groups.items():
        m = [r["metrics"] for r in rs]
        row = [name, ", ".join(str(r["seed"]) for r in rs), str(m[0]["steps"]),
               f"{statistics.mean(r['seconds'] for r in rs):.0f}",
               _spread([x["nats_per_bit"] for x in m]), _spread([x["bit_accuracy"] for x in m]),
               _spread([x["adherence"] for x in m])]
        row += [_spread([_recovery(r)[k, 0.0]["psnr_db"] for r in rs]) for k, _ in bases]
        for k, p in drops:
            row.append(_spread([_recovery(r)[k, p]["psnr_db"] - _recovery(r)[k, 0.0]["psnr_db"] for r in rs]))
        lines.append("| " + " | ".join(row) + " |")
    first = next(iter(groups.values()))[0]
    ref = _recovery(first)
    lines.append("")
    lines.append("No correction (the flipped scale followed by the true bits of the later scales), PSNR against the "
                 "clean reconstruction: " + ", ".join(f"k={k} p={p:g}: {ref[k, p]['reference_psnr_db']:.2f} dB"
                                                      for k, p in drops) + ".")
    s = first["metrics"]["sampling"]
    lines.append(f"Recovery sampled at cfg {s['recovery']['cfg']:g}, tau {s['recovery']['tau']:g}; adherence at cfg "
                 f"{s['adherence']['cfg']:g}, tau {s['adherence']['tau']:g}; "
                 f"{first['metrics']['scenes']} held-out scenes.")
    return lines


def head_size_table(records: Sequence[dict]) -> list[str]:
    rows = [r["metrics"] for r in records if r["arm"] == "head-size"]
    if not rows:
        return []
    first = rows[0]
    lines = [f"Heads on the {first['width']}-wide transformer (the rest of it: {first['rest_of_model_params']:,} "
             f"parameters); fp32 logits of one training batch of {first['batch']} x {first['tokens']} tokens.", "",
             "| d | index head params | bitwise head params | index logits (MB) | bitwise logits (MB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['index_head_params']:,} | {r['bits_head_params']:,} | "
                     f"{r['index_logits_bytes'] / 2**20:,.1f} | {r['bits_logits_bytes'] / 2**20:,.3f} |")
    return lines


def bits_table(records: Sequence[dict]) -> list[str]:
    rows = [r for r in records if r["claim"] == "bits"]
    if not rows:
        return ["No tokenizer was given for the bit-depth claim (--bits-tokenizers)."]
    n = max(len(r["metrics"]["psnr_db_per_scale"]) for r in rows)
    lines = ["| tokenizer | d | " + " | ".join(f"PSNR after scale {k + 1}" for k in range(n)) + " | parser pass |",
             "|" + "---|" * (n + 3)]
    for r in sorted(rows, key=lambda r: r["metrics"]["bits"]):
        m = r["metrics"]
        cells = [f"{v:.2f}" for v in m["psnr_db_per_scale"]] + [""] * (n - len(m["psnr_db_per_scale"]))
        lines.append(f"| {r['tokenizer']} | {m['bits']} | " + " | ".join(cells) + f" | {m['parser_pass']:.3f} |")
    return lines


def markdown(records: Sequence[dict]) -> str:
    parts = ["# The paper's claims, in miniature", "",
             "Written by `python -m infinity.experiments claims`; every figure is computed from results.json. "
             "Mean ± standard deviation over seeds. PSNR is the recovery result's, against the clean reconstruction; "
             "ΔPSNR is its PSNR at p minus its PSNR at p = 0 (same model, same scale k): what the flips cost.", "",
             "## Self-correction", "", *arm_table(records, "self-correction"), "",
             "## Bits vs indices", "", *arm_table(records, "head"), "", *head_size_table(records), "",
             "## Bit depth", "", *bits_table(records), ""]
    return "\n".join(parts)


def recovery_figure(records: Sequence[dict], path: Path, claim: str = "self-correction") -> None:
    """One panel per k: mean PSNR against p per arm, error bars of one standard deviation over seeds."""
    groups = _arms(records, claim)
    if not groups:
        return
    points = sorted(_recovery(next(iter(groups.values()))[0]))
    ks = sorted({k for k, _ in points})
    ps = sorted({p for _, p in points})
    curves = {}
    for name, rs in groups.items():
        for k in ks:
            vals = [[_recovery(r)[k, p]["psnr_db"] for r in rs] for p in ps]
            curves[name, k] = [(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for v in vals]
    lo = min(m - s for c in curves.values() for m, s in c)
    hi = max(m + s for c in curves.values() for m, s in c)
    lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))

    pw, ph, ml, mt, mb = 360, 260, 60, 40, 50
    img = Image.new("RGB", (ml + len(ks) * (pw + ml), mt + ph + mb + 20 * len(groups)), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    draw.text((ml, 8), "Recovery from flipped bits: PSNR (dB) of the result vs the clean reconstruction "
              "(the no-correction reference is in results.md)", fill="black", font=font)
    for i, k in enumerate(ks):
        x0 = ml + i * (pw + ml)

        def xy(p: float, v: float) -> tuple[float, float]:
            px = x0 + (p - ps[0]) / max(ps[-1] - ps[0], 1e-9) * pw
            return px, mt + ph - (v - lo) / (hi - lo) * ph

        draw.rectangle((x0, mt, x0 + pw, mt + ph), outline="black")
        draw.text((x0 + pw // 2 - 50, mt + ph + 22), f"fraction p flipped at scale k={k}", fill="black", font=font)
        for j in range(5):
            v = lo + j * (hi - lo) / 4
            _, y = xy(ps[0], v)
            draw.line((x0 - 4, y, x0, y), fill="black")
            draw.text((x0 - 40, y - 6), f"{v:.1f}", fill="black", font=font)
        for p in ps:
            x, _ = xy(p, lo)
            draw.line((x, mt + ph, x, mt + ph + 4), fill="black")
            draw.text((x - 8, mt + ph + 6), f"{p:g}", fill="black", font=font)
        for c, name in enumerate(groups):
            color = COLORS[c % len(COLORS)]
            pts = [xy(p, m) for p, (m, _) in zip(ps, curves[name, k])]
            draw.line(pts, fill=color, width=2)
            for (x, y), (m, s) in zip(pts, curves[name, k]):
                _, top = xy(0, m + s)
                _, bottom = xy(0, m - s)
                draw.line((x, top, x, bottom), fill=color)
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    for c, name in enumerate(groups):
        y = mt + ph + mb + 20 * c
        draw.line((ml, y + 6, ml + 30, y + 6), fill=COLORS[c % len(COLORS)], width=3)
        draw.text((ml + 40, y), f"{name} ({len(groups[name])} seeds)", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_report(records: Sequence[dict], cfg) -> None:
    docs = Path(cfg.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps(list(records), indent=1) + "\n")
    (docs / "results.md").write_text(markdown(records))
    recovery_figure(records, docs / "recovery.png")
