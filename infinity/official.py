"""The released models ("infinity-125m", "infinity-2b", "infinity-8b") mapped to our names, and where their weight
files are found.

`OFFICIAL_MODELS` gives each released model its architectures (our presets), the names of its weight files in
the Hugging Face repo FoundationVision/Infinity, its text encoder (Flan-T5-XL), the pixel budget of the official
schedules it was trained for, and the sampling defaults of the official inference.

`official_weights` finds those files: in a local folder ($INFINITY_WEIGHTS_DIR, or the folder given), then in the
Hugging Face cache, then by downloading them; when that fails, one WeightsNotFoundError names every missing file
and says where to put it. `load_official` reads them into our modules (`checkpoints.py` maps the key names);
`InfinityPipeline.from_pretrained` adds the text encoder, schedules and defaults.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import load_official_tokenizer, load_official_transformer
from .options import SamplingDefaults
from .text import FLAN_T5_XL
from .tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer, TokenizerConfig
from .transformer import TRANSFORMER_PRESETS, Infinity, TransformerConfig

logger = logging.getLogger(__name__)

OFFICIAL_REPO = "FoundationVision/Infinity"
WEIGHTS_DIR_ENV = "INFINITY_WEIGHTS_DIR"


class WeightsNotFoundError(FileNotFoundError):
    """The model's files are not on this machine and could not be downloaded; the message says where to put them."""


@dataclass(frozen=True)
class OfficialModel:
    """A released model: its architectures, weight files in the repo FoundationVision/Infinity, and defaults."""

    title: str
    tokenizer: TokenizerConfig
    tokenizer_file: str
    transformer: TransformerConfig
    transformer_weights: str  # a .pth file, or a folder of shards when `sharded`
    sharded: bool
    defaults: SamplingDefaults
    budget: str = "1M"  # pixel budget of the official schedules it was trained for
    text_encoder: str = FLAN_T5_XL


# Defaults: cfg and tau of the official notebooks (tools/interactive_infer.ipynb for 2B, as predict.py;
# tools/interactive_infer_8b.ipynb for 8B; scripts/infer.sh runs 2B at cfg 4), top_k and top_p of gen_one_img
# in tools/run_infinity.py (top_k=900 is a no-op over the 2 values of a bit). All run in bf16 on the GPU.
# Infinity-125M (256x256) has no settings of its own in the official scripts: it takes 2B's.
def _released(title: str, tokenizer: str, transformer: str, weights: str, tau: float, sharded: bool = False,
              budget: str = "1M") -> OfficialModel:
    """A released model from the names of its presets and files, with the official sampling settings."""
    preset = TOKENIZER_PRESETS[tokenizer]
    return OfficialModel(
        title=title, tokenizer=preset.config, tokenizer_file=preset.weight_file,
        transformer=TRANSFORMER_PRESETS[transformer], transformer_weights=weights, sharded=sharded,
        defaults=SamplingDefaults(cfg=3.0, tau=tau, top_k=900, top_p=0.97), budget=budget,
    )


OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "infinity-125m": _released("Infinity-125M", "infinity-vae-d16", "infinity-125m", "infinity_125M_256x256.pth",
                               tau=0.5, budget="0.06M"),
    "infinity-2b": _released("Infinity-2B", "infinity-vae-d32reg", "infinity-2b", "infinity_2b_reg.pth", tau=0.5),
    "infinity-8b": _released("Infinity-8B", "infinity-vae-d56-f8", "infinity-8b", "infinity_8b_weights", tau=1.0,
                             sharded=True),
}
OFFICIAL_EXAMPLES = (
    "a red fox sitting in fresh snow, morning light",
    "a bowl of ramen on a wooden table, studio photo",
    "a lighthouse on a cliff during a storm, oil painting",
)


# ---- weight files: local folder, then the Hugging Face cache, then a download ----


def official_model_in(folder: Path) -> str | None:
    """The released model whose transformer weights `folder` holds; None when it holds none."""
    names = [name for name, m in OFFICIAL_MODELS.items() if (folder / m.transformer_weights).exists()]
    if len(names) > 1:
        raise ValueError(
            f"{folder} holds the weights of {', '.join(names)}: pass the model name and set {WEIGHTS_DIR_ENV}={folder}"
        )
    return names[0] if names else None


def _hub_path(name: str, folder: bool, cache_dir, local_files_only: bool) -> Path:
    """A file (or a folder of shards) of the official repo, from the Hugging Face cache or downloaded into it."""
    from huggingface_hub import hf_hub_download, snapshot_download

    if not folder:
        return Path(hf_hub_download(OFFICIAL_REPO, name, cache_dir=cache_dir, local_files_only=local_files_only))
    root = snapshot_download(
        OFFICIAL_REPO, allow_patterns=[f"{name}/*"], cache_dir=cache_dir, local_files_only=local_files_only
    )
    path = Path(root) / name
    if not path.is_dir() or not any(path.iterdir()):
        raise FileNotFoundError(f"{name}/ is not in the cached snapshot of {OFFICIAL_REPO}")
    return path


def find_weights(name: str, folder: bool, weights_dir: Path | None, cache_dir, local_files_only: bool) -> Path:
    """One file (or folder of shards, `folder`) of the official repo: in `weights_dir`, the cache, or downloaded."""
    if weights_dir is not None and (weights_dir / name).exists():
        return weights_dir / name
    try:
        return _hub_path(name, folder, cache_dir, local_files_only=True)
    except FileNotFoundError:
        if local_files_only:
            raise
    logger.info("downloading %s from %s", name, OFFICIAL_REPO)
    return _hub_path(name, folder, cache_dir, local_files_only=False)


def official_weights(
    model: OfficialModel, weights_dir: Path | None, cache_dir, local_files_only: bool
) -> dict[str, Path]:
    """Path of each weight file of `model`, or one WeightsNotFoundError naming every missing file.
    weights_dir: the local folder looked in first; None for $INFINITY_WEIGHTS_DIR (when set)."""
    if weights_dir is None and os.environ.get(WEIGHTS_DIR_ENV):
        weights_dir = Path(os.environ[WEIGHTS_DIR_ENV])
    wanted = {model.tokenizer_file: False, model.transformer_weights: model.sharded}
    found, reasons = {}, []
    for name, folder in wanted.items():
        try:
            found[name] = find_weights(name, folder, weights_dir, cache_dir, local_files_only)
        except Exception as e:  # offline, hub unreachable, file renamed: the user's remedy is the same
            reasons.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}")
    missing = [name for name in wanted if name not in found]
    if missing:
        looked = f"{weights_dir}" if weights_dir else f"${WEIGHTS_DIR_ENV} (unset)"
        how = "downloads are off (local_files_only)" if local_files_only else f"the download failed ({reasons[0]})"
        raise WeightsNotFoundError(
            f"{model.title} weights not found: {', '.join(missing)} are neither in {looked} nor in the Hugging Face "
            f"cache, and {how}. Download them from the Hugging Face repo {OFFICIAL_REPO} "
            f"(https://huggingface.co/{OFFICIAL_REPO}) into a folder and set {WEIGHTS_DIR_ENV} to it, "
            f"or pass that folder as the model"
        )
    return found


def load_official(
    model: OfficialModel, weights_dir: Path | None, cache_dir, local_files_only: bool, dtype: torch.dtype
) -> tuple[BitwiseTokenizer, Infinity]:
    """The tokenizer (fp32) and the transformer (`dtype`) of `model`, from the files `official_weights` finds."""
    paths = official_weights(model, weights_dir, cache_dir, local_files_only)
    tokenizer = load_official_tokenizer(paths[model.tokenizer_file], model.tokenizer)
    # Built on the meta device and given the file's (memory-mapped) tensors converted once to `dtype`, so the
    # pipeline moves that one copy to the device.
    transformer = load_official_transformer(
        paths[model.transformer_weights], model.transformer, dtype, tokenizer_file=model.tokenizer_file
    )
    return tokenizer, transformer
