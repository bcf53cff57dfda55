"""The app's tab for the self-correction pair: loading it on first use, and the text around the numbers that
`infinity/eval/pair.py` measures (the introduction from pair.json, each arm's label, the conclusion computed from
the means)."""
from __future__ import annotations

import threading
from pathlib import Path

from ..eval.pair import ARMS, PAIR_DIR, Measured, SelfCorrectionPair, read_info
from ..official import WeightsNotFoundError

PSNR_TOLERANCE = 0.1  # dB: closer than this counts as no difference


def arm_label(info: dict, arm: str) -> str:
    """How the app names an arm: by the self-correction it was trained with."""
    strength = info["models"][arm]["self_correction_strength"]
    return ("trained without self-correction" if strength == 0
            else f"trained with self-correction (flip strength {strength:g})")


def comparison_text(pair: SelfCorrectionPair, m: Measured, tolerance: float = PSNR_TOLERANCE) -> str:
    """What the means say, computed from them: each model's distance from the clean reconstruction with the flips
    and without, and which came back closer (or neither, within `tolerance` dB)."""
    lines = []
    for arm in ARMS:
        clean, flipped = m.points[arm]
        lines.append(f"- {arm_label(pair.info, arm)}: **{flipped.psnr_db:.2f} dB** from the clean reconstruction "
                     f"({clean.psnr_db:.2f} dB with nothing flipped, so the flips cost it "
                     f"{clean.psnr_db - flipped.psnr_db:.2f} dB); the parser reads {flipped.parser_pass:.0%} of "
                     "the scenes")
    lines.append(f"- the flipped scale followed by the clean encoding's later bits (nothing sampled, nothing "
                 f"corrected): {m.reference_psnr_db:.2f} dB")
    lines.append(f"- the parser reads {m.points['with'][0].reference_parser_pass:.0%} of the clean reconstructions "
                 "themselves")
    wins = m.wins(tolerance)
    lines.append(f"- scene by scene: {wins['with']} of {m.scenes} came back closer with self-correction, "
                 f"{wins['without']} without, {wins['tie']} within {tolerance:g} dB of each other")
    gap = m.points["with"][1].psnr_db - m.points["without"][1].psnr_db
    if gap > tolerance:
        verdict = (f"The model trained with self-correction came back closer to the clean reconstruction, by "
                   f"{gap:.2f} dB.")
    elif gap < -tolerance:
        verdict = (f"Here the model trained without self-correction came back closer, by {-gap:.2f} dB: at this "
                   "scale, fraction and training length, self-correction did not help.")
    else:
        verdict = f"Both models came back equally close (within {tolerance:g} dB): no measurable effect here."
    return (f"Over {m.scenes} held-out scenes, {m.p:.0%} of scale {m.k}'s bits flipped:\n\n" + "\n".join(lines)
            + f"\n\n{verdict}")


class PairSlot:
    """The pair, loaded on first use (once, under a lock) so the app starts without it."""

    def __init__(self, folder: str | Path = PAIR_DIR):
        self.folder = Path(folder)
        self._pair: SelfCorrectionPair | None = None
        self._lock = threading.Lock()

    def info(self) -> dict | None:
        """pair.json, or None when the folder has no valid pair (the tab then says so)."""
        try:
            return read_info(self.folder)
        except (ValueError, OSError):
            return None

    def get(self) -> SelfCorrectionPair:
        with self._lock:
            if self._pair is None:
                try:
                    self._pair = SelfCorrectionPair.load(self.folder)
                except WeightsNotFoundError as e:
                    raise ValueError(f"The self-correction pair is not available: {e}") from None
            return self._pair


def pair_intro(info: dict | None) -> str:
    """The tab's introduction, from pair.json (None: there is no pair)."""
    if info is None:
        return (f"No matched pair in this checkout ({PAIR_DIR.name}/ is written by "
                "`python -m infinity.experiments pair`).")
    with_, without = info["models"]["with"], info["models"]["without"]
    H, W = info["schedule"][-1]
    return (
        f"Two transformers of the same size, trained for {without['steps']:,} and {with_['steps']:,} steps of "
        f"{info['batch_size']} shapes scenes with the same seed ({with_['seed']}), images and dropped prompts: one "
        f"with bitwise self-correction (flip strength {with_['self_correction_strength']:g} on scales "
        f"1..{with_['self_correction_scales']}), one without. Both get a held-out scene's true bits for scales "
        f"1..k with a fraction of scale k flipped, and sample scales k+1..{len(info['schedule'])} ({H}x{W} tokens "
        "at the last) with the same random stream. PSNR against the scene's clean reconstruction measures how "
        "far each comes back. 'True later bits' is the flipped scale followed by the clean encoding's later bits: "
        "what the flips alone cost when nothing is sampled and nothing corrected."
        f" Scene {info['default_scene']} is shown first by a rule fixed when the pair was exported, before either "
        "model ran on it: of the held-out scenes whose reconstruction the scene parser reads (all, if none), the one "
        "the tokenizer reconstructs best."
    ) + _tokenizer_note(info)


def _tokenizer_note(info: dict) -> str:
    q = info.get("tokenizer_on_heldout")
    if not q:
        return ""
    return (f" At this size the tokenizer reconstructs the held-out scenes at {q['psnr_db']:.1f} dB and the scene "
            f"parser reads {q['parser_pass']:.0%} of its reconstructions: compare the results with the clean "
            "reconstruction, which is what the models can come back to, not with the scene.")
