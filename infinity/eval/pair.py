"""The self-correction claim's matched pair, measured: two transformers of the same size, trained alike (seed,
data, steps, dropped prompts) except that one was trained with bitwise self-correction (paper Sec. 3.3: bits of
the early scales flipped in its history, later residuals re-quantized) and one without.

Both models get the same intervention: a held-out scene's true bits for scales 1..k, a fraction p of scale k
flipped, the same random stream for the rest (`infinity/eval/recovery.py`'s `intervene`, called with one seed
for both). How close each comes back to the scene's clean reconstruction is what training with self-correction
bought: `compare_scene` on one scene to look at, `measure` as a mean over several scenes to trust. The app's tab
(`infinity/app/pair.py`) turns these numbers into text.

The folder (`assets/self-correction`, written by `python -m infinity.experiments pair`) holds pair.json and the
two transformers; the tokenizer is the embedded model's, named in pair.json with its SHA-256.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoints import CheckpointError, load_model
from ..data.shapes import Scene, caption, render
from ..images import to_pil
from ..official import WeightsNotFoundError
from ..options import SamplingDefaults
from ..pipeline import InfinityPipeline
from ..schedules import Schedule
from ..text import MiniLMTextEncoder
from ..tokenizer import BitwiseTokenizer
from ..transformer import Infinity
from .recovery import RecoveryPoint, encode_scenes, intervene, recovery_curve, scores
from .shapes import evaluation_scenes

PAIR_DIR = Path(__file__).resolve().parents[2] / "assets" / "self-correction"
PAIR_FILE = "pair.json"
FORMAT, FORMAT_VERSION = "infinity-self-correction-pair", 1
ARMS = ("without", "with")  # trained without / with self-correction
ASPECT_RATIO = "1:1"


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
    images = {"scene": Image.fromarray(render(scene, H, W)), CLEAN: to_pil(encoded.clean_B3HW[0])}
    psnr_db, parsed = {}, {}
    for arm in ARMS:
        result, reference = intervene(pair.pipes[arm], encoded, k, p, aspect_ratio=ASPECT_RATIO, seed=seed)
        (psnr_db[arm], parsed[arm], psnr_db[NO_CORRECTION], parsed[NO_CORRECTION]) = scores(
            result, reference, encoded.clean_B3HW, [scene])[0].tolist()
        images[arm] = to_pil(result[0])
    images[NO_CORRECTION] = to_pil(reference[0])
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

    def wins(self, tolerance: float) -> dict[str, int]:
        """Per arm, the scenes (with p flipped) it brought back closer to the clean reconstruction than the other
        by more than `tolerance` dB; "tie" counts the rest."""
        a, b = (np.array(self.points[arm][1].psnr_per_scene_db) for arm in ARMS)
        out = {ARMS[0]: int((a > b + tolerance).sum()), ARMS[1]: int((b > a + tolerance).sum())}
        out["tie"] = self.scenes - sum(out.values())
        return out


def measure(pair: SelfCorrectionPair, k: int, p: float, count: int, seed: int) -> Measured:
    """The recovery measure of both models on the first `count` held-out scenes (the same scenes, flips and
    random stream for both)."""
    scenes = pair.scenes[:count]
    points = {}
    for arm in ARMS:
        clean, flipped = recovery_curve(pair.pipes[arm], scenes, [k], [0.0, p], aspect_ratio=ASPECT_RATIO, seed=seed)
        points[arm] = (clean, flipped)
    return Measured(k, p, len(scenes), points)
