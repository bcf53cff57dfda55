"""The tokenizers the app offers for an uploaded image: the model's own, and every general tokenizer file in a
folder (`assets/tokenizers/*.safetensors`, or the folder named by $INFINITY_TOKENIZERS_DIR). Our tokenizer files
carry their config, so a file is all it takes; the folder may hold none.

A general tokenizer works on the shapes schedules (128 px on the short side at 8 px per cell: 1:1, 3:2, 2:3; the
same grids at its own patch size otherwise), the sizes `python -m infinity tokenize` uses for our files, so the
app and the command line resize an image to the same size.

Default: with a released model (infinity-2b, ...) the model's own tokenizer; with any other model (the embedded
one, trained on shapes scenes only), when there are general tokenizers, BEST: every tokenizer encodes the image and
the one with the highest final PSNR is shown (which one wins depends on the image,
shapes scenes included), with the PSNR of each, so the choice is visible.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from safetensors import safe_open

from ..checkpoints import load_model
from ..official import OFFICIAL_MODELS
from ..schedules import Schedule, nearest_schedule, shapes_schedules
from ..tokenizer import BitwiseTokenizer
from ..tokenizer.model import latent_scales

logger = logging.getLogger(__name__)

TOKENIZERS_DIR_ENV = "INFINITY_TOKENIZERS_DIR"
DEFAULT_TOKENIZERS_DIR = Path(__file__).resolve().parents[2] / "assets" / "tokenizers"
MODEL_OWN = "the model's own"
BEST = "the best on this image"


@dataclass
class Codec:
    """A tokenizer and the schedules it encodes with: aspect-ratio name -> Schedule whose grids are the
    tokenizer's latent grids and whose patch size is its pixels per latent cell."""

    label: str
    tokenizer: BitwiseTokenizer
    schedules: dict[str, Schedule]

    def aspect_ratio(self, value: str, image: Image.Image | None = None) -> str:
        """`value` when it is one of ours, else (for "auto", or a ratio of the model that this tokenizer's
        schedules do not have) the one nearest the image's (or the named ratio's) shape."""
        if value in self.schedules:
            return value
        return self.nearest(image.height / image.width if image is not None else _h_div_w(value))

    def nearest(self, h_div_w: float) -> str:
        """The aspect ratio whose size is nearest `h_div_w` (height / width), in log ratio."""
        return nearest_schedule(self.schedules, h_div_w)


def _h_div_w(name: str) -> float:
    w, h = (float(x) for x in name.split(":"))
    return h / w


def model_codec(pipe) -> Codec:
    """The pipeline's own tokenizer, on its schedules in latent cells (Infinity-8B: s x s cells per token)."""
    p = pipe.tokenizer.config.patch_size
    schedules = {name: Schedule(tuple(latent_scales(s.scales, pipe.spatial_patch)), p, s.h_div_w)
                 for name, s in pipe.schedules.items()}
    return Codec(MODEL_OWN, pipe.tokenizer, schedules)


def tokenizer_bits(path: Path) -> int | None:
    """Bits per token of our tokenizer file, from its metadata alone; None if it is not one."""
    config = tokenizer_config(path)
    return None if config is None else int(config["bits"])


def tokenizer_config(path: Path) -> dict | None:
    """The config in our tokenizer file's metadata; None (and a warning) if it is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("kind") != "tokenizer":
            return None
        config = json.loads(metadata["config"])
        int(config["bits"]), int(config["patch_size"])
        return config
    except Exception as e:  # any unreadable file is left out of the choice, with its reason in the log
        logger.warning("%s: not offered as a tokenizer (%s)", path, e)
        return None


class TokenizerShelf:
    """The choice of tokenizers for one app: labels, the default, and each Codec loaded on first use."""

    def __init__(self, pipe, folder: str | os.PathLike | None = None):
        self.pipe = pipe
        folder = Path(folder or os.environ.get(TOKENIZERS_DIR_ENV) or DEFAULT_TOKENIZERS_DIR)
        found = {path: tokenizer_bits(path) for path in sorted(folder.glob("*.safetensors"))}
        files = sorted(((bits, path) for path, bits in found.items() if bits), key=lambda t: (t[0], t[1].name))
        self.files = {path.stem: path for _, path in files}  # the text beside a result states the bits
        self._loaded = {MODEL_OWN: model_codec(pipe)}
        own = {name: sc.pixel_hw for name, sc in self._loaded[MODEL_OWN].schedules.items()}
        # BEST compares PSNRs, which only mean the same at the same image size: every file must encode the
        # model's aspect ratios at the model's sizes (the embedded model and the general tokenizers do).
        self.comparable = pipe.name not in OFFICIAL_MODELS and all(
            {n: sc.pixel_hw for n, sc in shapes_schedules(tokenizer_config(path)["patch_size"]).items()
             if n in own} == own for path in self.files.values())

    @property
    def choices(self) -> list[str]:
        return [MODEL_OWN, *self.files]

    @property
    def options(self) -> list[str]:
        """What a dropdown offers: BEST first when there are general tokenizers at the model's image sizes (not for
        the released models, 1024 px against the files' 128 px), then every tokenizer."""
        return [BEST, *self.choices] if self.files and self.comparable else self.choices

    @property
    def general(self) -> list[str]:
        return list(self.files)

    @property
    def default(self) -> str:
        return self.options[0]

    def get(self, label: str) -> Codec:
        if label not in self._loaded:
            if label not in self.files:
                raise ValueError(f"tokenizer must be one of {', '.join(self.choices)}; got {label!r}.")
            tokenizer = load_model(self.files[label], self.pipe.device)
            if not isinstance(tokenizer, BitwiseTokenizer):
                raise ValueError(f"{self.files[label].name} does not hold a tokenizer.")
            self._loaded[label] = Codec(label, tokenizer, shapes_schedules(tokenizer.config.patch_size))
        return self._loaded[label]
