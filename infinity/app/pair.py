"""The self-correction claim's matched pair, side by side: two transformers of the same size, trained alike (seed,
data, steps, dropped prompts) except that one was trained with bitwise self-correction (paper Sec. 3.3: bits of
the early scales flipped in its history, later residuals re-quantized) and one without.

The app gives both the same intervention: a held-out scene's true bits for scales 1..k, a fraction p of scale k
flipped, the same random stream for the rest. How close each comes back to the scene's clean reconstruction is
what training with self-correction bought: the recovery measure of `infinity/eval/recovery.py`, on one scene to
look at and as a mean over several scenes to trust. `comparison_text` turns those numbers into the sentence the
app prints.

The folder (`assets/self-correction`, written by `python -m infinity.experiments pair`) holds pair.json and the
two transformers; the tokenizer is the embedded model's, named in pair.json with its SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..checkpoints import CheckpointError, load_model
from ..data.shapes import Scene, caption, render
from ..eval.recovery import RecoveryPoint, encode_scenes, intervene, recovery_curve, scores
from ..eval.shapes import evaluation_scenes
from ..official import WeightsNotFoundError
from ..options import SamplingDefaults
from ..pipeline import InfinityPipeline
from ..schedules import Schedule
from ..text import MiniLMTextEncoder
from ..tokenizer import BitwiseTokenizer
from ..transformer import Infinity
from .views import tensor_to_pil

PAIR_DIR = Path(__file__).resolve().parents[2] / "assets" / "self-correction"
PAIR_FILE = "pair.json"
FORMAT, FORMAT_VERSION = "infinity-self-correction-pair", 1
ARMS = ("without", "with")  # trained without / with self-correction
ASPECT_RATIO = "1:1"
PSNR_TOLERANCE = 0.1  # dB: closer than this counts as no difference


def read_info(folder: str | Path = PAIR_DIR) -> dict:
    """pair.json, checked: ValueError (or WeightsNotFoundError when there is none) with what is wrong."""
    path = Path(folder) / PAIR_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"no self-correction pair at {Path(folder)} (it is written by "
                                   "`python -m infinity.experiments pair`)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version {FORMAT_VERSION}")
    missing = {"tokenizer", "tokenizer_sha256", "text_encoder", "schedule", "heldout", "models"} - set(info)
    if missing or set(info["models"]) != set(ARMS):
        raise ValueError(f"{path}: missing {sorted(missing) or 'a model'}; it needs the models {list(ARMS)}")
    if info["text_encoder"].get("kind") != "minilm":
        raise ValueError(f"{path}: the pair runs on the MiniLM text encoder, not {info['text_encoder'].get('kind')}")
    return info


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class SelfCorrectionPair:
    """The two models as pipelines sharing one tokenizer and text encoder, and the held-out scenes they were
    measured on."""

    pipes: dict[str, InfinityPipeline]  # ARMS -> pipeline
    info: dict  # pair.json
    scenes: list[Scene]

    @classmethod
    def load(cls, folder: str | Path = PAIR_DIR) -> SelfCorrectionPair:
        folder = Path(folder)
        info = read_info(folder)
        tokenizer_path = (folder / info["tokenizer"]).resolve()
        if not tokenizer_path.is_file():
            raise WeightsNotFoundError(f"the pair's tokenizer {tokenizer_path} is missing")
        if sha256(tokenizer_path) != info["tokenizer_sha256"]:
            raise ValueError(f"{tokenizer_path} is not the tokenizer the pair was trained with (SHA-256 differs)")
        tokenizer = load_checked(tokenizer_path, BitwiseTokenizer).float()
        text_encoder = MiniLMTextEncoder.from_pretrained(device="cpu", max_length=info["text_encoder"]["max_length"])
        schedule = Schedule(tuple(tuple(hw) for hw in info["schedule"]), tokenizer.config.patch_size,
                            info["schedule"][-1][0] / info["schedule"][-1][1])
        pipes = {}
        for arm in ARMS:
            transformer = load_checked(folder / info["models"][arm]["file"], Infinity).float()
            pipes[arm] = InfinityPipeline(tokenizer, transformer, text_encoder, {ASPECT_RATIO: schedule},
                                          SamplingDefaults(cfg=1.0, tau=1.0), f"self-correction-{arm}", "cpu",
                                          torch.float32)
        scenes = evaluation_scenes({int(n): c for n, c in info["heldout"].items()})
        return cls(pipes, info, scenes)

    @property
    def num_scales(self) -> int:
        return self.pipes["with"].schedule(ASPECT_RATIO).num_scales

    def label(self, arm: str) -> str:
        strength = self.info["models"][arm]["self_correction_strength"]
        return ("trained without self-correction" if strength == 0
                else f"trained with self-correction (flip strength {strength:g})")


def load_checked(path: Path, cls: type) -> torch.nn.Module:
    """The model in our file at `path`, which must be a `cls`: ValueError otherwise."""
    try:
        model = load_model(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not isinstance(model, cls):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
    return model


@dataclass
class SceneComparison:
    """One scene: the images (input render, clean reconstruction, no correction, each model's result), each
    image's PSNR against the clean reconstruction and whether the scene parser reads the scene in it."""

    caption: str
    images: dict[str, Image.Image]
    psnr_db: dict[str, float]
    parsed: dict[str, bool]


CLEAN, NO_CORRECTION = "clean reconstruction", "no correction"


@torch.no_grad()
def compare_scene(pair: SelfCorrectionPair, index: int, k: int, p: float, seed: int) -> SceneComparison:
    """Held-out scene `index` (0-based), fraction `p` of scale `k` (1-based) flipped, the rest sampled with `seed`
    by both models."""
    scene = pair.scenes[index]
    pipe = pair.pipes["with"]
    encoded = encode_scenes(pipe, [scene], ASPECT_RATIO)
    H, W = pipe.schedule(ASPECT_RATIO).pixel_hw
    images = {"scene": Image.fromarray(render(scene, H, W)), CLEAN: tensor_to_pil(encoded.clean_B3HW[0])}
    psnr_db, parsed = {}, {}
    for arm in ARMS:
        result, reference = intervene(pair.pipes[arm], encoded, k, p, aspect_ratio=ASPECT_RATIO, seed=seed)
        (psnr_db[arm], parsed[arm], psnr_db[NO_CORRECTION], parsed[NO_CORRECTION]) = scores(
            result, reference, encoded.clean_B3HW, [scene])[0].tolist()
        images[arm] = tensor_to_pil(result[0])
    images[NO_CORRECTION] = tensor_to_pil(reference[0])
    return SceneComparison(caption(scene), images, psnr_db, {n: bool(v) for n, v in parsed.items()})


@dataclass
class Measured:
    """Means over `scenes` held-out scenes: per arm, the point with nothing flipped and the point with p flipped."""

    k: int
    p: float
    scenes: int
    points: dict[str, tuple[RecoveryPoint, RecoveryPoint]]  # ARMS -> (p = 0, p)

    @property
    def reference_psnr_db(self) -> float:
        return self.points["with"][1].reference_psnr_db


def measure(pair: SelfCorrectionPair, k: int, p: float, count: int, seed: int) -> Measured:
    """The recovery measure of both models on the first `count` held-out scenes (the same scenes, flips and
    random stream for both)."""
    scenes = pair.scenes[:count]
    points = {}
    for arm in ARMS:
        clean, flipped = recovery_curve(pair.pipes[arm], scenes, [k], [0.0, p], aspect_ratio=ASPECT_RATIO, seed=seed)
        points[arm] = (clean, flipped)
    return Measured(k, p, len(scenes), points)


def comparison_text(pair: SelfCorrectionPair, m: Measured, tolerance: float = PSNR_TOLERANCE) -> str:
    """What the means say, computed from them: each model's distance from the clean reconstruction with the flips
    and without, and which came back closer (or neither, within `tolerance` dB)."""
    lines = []
    for arm in ARMS:
        clean, flipped = m.points[arm]
        lines.append(f"- {pair.label(arm)}: **{flipped.psnr_db:.2f} dB** from the clean reconstruction "
                     f"({clean.psnr_db:.2f} dB with nothing flipped, so the flips cost it "
                     f"{clean.psnr_db - flipped.psnr_db:.2f} dB); the parser reads {flipped.parser_pass:.0%} of "
                     "the scenes")
    lines.append(f"- the flipped scale followed by the clean encoding's later bits (nothing sampled, nothing "
                 f"corrected): {m.reference_psnr_db:.2f} dB")
    lines.append(f"- the parser reads {m.points['with'][0].reference_parser_pass:.0%} of the clean reconstructions "
                 "themselves")
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
    ) + _tokenizer_note(info)


def _tokenizer_note(info: dict) -> str:
    q = info.get("tokenizer_on_heldout")
    if not q:
        return ""
    return (f" At this size the tokenizer reconstructs the held-out scenes at {q['psnr_db']:.1f} dB and the scene "
            f"parser reads {q['parser_pass']:.0%} of its reconstructions: compare the results with the clean "
            "reconstruction, which is what the models can come back to, not with the scene.")
