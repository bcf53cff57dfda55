"""Loading and saving weights: official `.pth` files and our own safetensors files.

* Official checkpoints load with `torch.load(weights_only=True)`: tensors only, no code runs while
  unpickling. Their key names are mapped to ours here and only here. Infinity-8B is released sharded: a
  directory with an `*.index.json` naming the shard (`.bin` or `.safetensors`) of every key.
* Models are built on the meta device and receive the file's tensors themselves (`assign=True`), memory-mapped
  where the format allows, so loading never holds a second full copy of the weights.
* Our models save as one safetensors file whose metadata holds the model kind and its config as JSON,
  so loading needs nothing but the path.
* Every failure (missing, truncated, foreign, malicious or mismatched file) raises `CheckpointError`
  with one message naming the file and the first offending keys.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .precision import cast_blocks_
from .schedules import OFFICIAL_PATCH_SIZE
from .tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer, TokenizerConfig
from .transformer import TRANSFORMER_PRESETS, Infinity, TransformerConfig

FORMAT_VERSION = "1"
_SHOWN = 5  # how many offending keys a message lists


class CheckpointError(RuntimeError):
    """A weights file that cannot be used, with the reason and the file in the message."""


# ---------------------------------------------------------------------------------------------------------
# Official key names

# A conv or norm module name, then the official wrapper's `.conv` / `.norm`, then the parameter.
_WRAPPED = re.compile(r"\.(conv_in|conv_out|conv1|conv2|nin_shortcut|conv|norm1|norm2|norm_out)\.(?:conv|norm)\.(weight|bias)$")
# BSQ's `mask` buffer (powers of two for integer labels; Infinity only uses bit labels) is stored twice
# by the official code (the quantizer is registered as `quantizer` and as `quantize`); it carries no weights.
_DERIVED_TOKENIZER_KEYS = re.compile(r"^quantize(r)?\.lfq\.mask$")


def official_tokenizer_key(key: str) -> str | None:
    """Our key for an official tokenizer key, or None for a derived buffer we do not keep.

    The official code wraps every conv and norm in a module of its own (`conv_in.conv.weight`,
    `norm1.norm.weight`, `downsample.conv.conv.weight`); ours are plain. Files that store the plain
    (FLUX-style) names already map to themselves.
    """
    if _DERIVED_TOKENIZER_KEYS.match(key):
        return None
    return _WRAPPED.sub(r".\1.\2", key)


# Transformer: our modules keep the official names except for four renames:
#   block_chunks.{i}.module.{j}.*  ->  blocks.{i * blocks_per_chunk + j}.*   (the official code groups blocks
#                                                                           in chunks for FSDP; ours are flat)
#   text_proj_for_sos.ca.*         ->  text_pool.*
#   text_proj_for_ca.*             ->  text_proj.*
#   head_nm.*                      ->  head_norm.*
# The all-zero `zero_k_bias` buffers (our k projections have no bias) and the official model's derived
# mask/length buffers have no counterpart.
_PREFIX_RENAMES = (
    ("text_proj_for_sos.ca.", "text_pool."),
    ("text_proj_for_ca.", "text_proj."),
    ("head_nm.", "head_norm."),
)
_DERIVED_BUFFERS = {"lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen"}
_CHUNKED_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")  # official models built with block_chunks=1


def official_blocks_per_chunk(official_keys: Iterable[str]) -> int:
    """Blocks per chunk of an official state dict (1 when its blocks are not chunked)."""
    in_chunk = [int(m.group(2)) for m in map(_CHUNKED_BLOCK.match, official_keys) if m]
    return max(in_chunk) + 1 if in_chunk else 1


def official_transformer_key(key: str, blocks_per_chunk: int) -> str | None:
    """Our name for an official state-dict key, or None for an official buffer we do not keep."""
    if key in _DERIVED_BUFFERS or key.endswith("zero_k_bias"):
        return None
    if m := _CHUNKED_BLOCK.match(key):
        return f"blocks.{int(m.group(1)) * blocks_per_chunk + int(m.group(2))}.{m.group(3)}"
    if _FLAT_BLOCK.match(key):
        return key
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def official_transformer_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official Infinity state dict with our names (derived buffers dropped)."""
    key_map = partial(official_transformer_key, blocks_per_chunk=official_blocks_per_chunk(state_dict))
    return map_official(state_dict, key_map)


# ---------------------------------------------------------------------------------------------------------
# Reading files


def _first(keys: list[str], what: str = "keys") -> str:
    """A listing like '3 missing keys: a, b, c', naming at most _SHOWN of them."""
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{more}"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")


def read_torch_weights(path: str | os.PathLike) -> dict:
    """The object stored in a `.pth` file, read without executing any pickled code."""
    path = Path(path)
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors and plain containers, which "
            f"could run code when unpickled; only weights-only checkpoints are loaded ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None


def _tensor_dict(obj: object, path: Path, entries: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: under one of `entries`, or the object itself."""
    if isinstance(obj, Mapping):
        for name in entries:
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: no state dict found (expected a mapping of tensors, or one under {list(entries)})"
        )
    return dict(obj)


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        _check_file(path)
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return _tensor_dict(read_torch_weights(path), path, entries=())


def _index_file(path: Path) -> Path:
    """The index of a sharded checkpoint given as its directory or as the index itself."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such file or directory")
    indexes = sorted(path.glob("*.index.json"))
    # Both formats side by side (as Hugging Face repositories sometimes hold): take safetensors, which maps lazily.
    preferred = [i for i in indexes if i.name.endswith(".safetensors.index.json")] or indexes
    if not preferred:
        raise CheckpointError(f"{path}: a directory without an *.index.json (expected a sharded checkpoint)")
    return preferred[0]


def read_sharded_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a sharded checkpoint (the Hugging Face layout the official 8B model uses).

    `path` is the directory or its index file: JSON with a "weight_map" from every key to its shard's file name
    (next to the index). Shards are `.safetensors` or weights-only torch pickles (`.bin`, `.pth`).
    """
    index = _index_file(Path(path))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a shard index (JSON with a 'weight_map'): {e!r}") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map every key to a shard file name")
    shards = sorted(set(weight_map.values()))
    for shard in shards:  # before reading gigabytes
        if not (index.parent / shard).exists():
            raise CheckpointError(f"{index}: names the shard {shard}, which is not in {index.parent}")
    state_dict: dict[str, torch.Tensor] = {}
    for shard in shards:
        shard_path = index.parent / shard
        tensors = _read_shard(shard_path)
        absent = [k for k, v in weight_map.items() if v == shard and k not in tensors]
        if absent:
            raise CheckpointError(f"{shard_path}: lacks {_first(absent)} that {index.name} puts there")
        state_dict.update(tensors)
    return state_dict


def empty_model(model_cls: type[nn.Module], config: object, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model with the right parameter names, shapes and dtype but no storage yet (on the meta device)."""
    with torch.device("meta"):
        return model_cls(config).to(dtype)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> nn.Module:
    """Load `state_dict` into `model`, or fail naming the first missing, unexpected and mis-shaped keys.

    A model on the meta device (`empty_model`) takes the tensors themselves, converted to its dtype where they
    differ; a materialised model has them copied into its own parameters.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        _first(keys, what)
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems))
    on_meta = any(t.is_meta for t in own.values())
    if on_meta:
        state_dict = {k: v.to(own[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in model.buffers()):  # a non-persistent buffer: not in any file
        raise TypeError(f"{type(model).__name__} has buffers outside its state dict; build it with real storage")
    return model


def map_official(
    state_dict: Mapping[str, torch.Tensor], key_map: Callable[[str], str | None]
) -> dict[str, torch.Tensor]:
    mapped = {}
    for key, value in state_dict.items():
        ours = key_map(key)
        if ours is not None:
            mapped[ours] = value
    return mapped


def load_official_tokenizer(path: str | os.PathLike, config: TokenizerConfig | str) -> BitwiseTokenizer:
    """A released tokenizer (`infinity_vae_*.pth`, weights under "vae") in eval mode.

    `config` is a TokenizerConfig or a preset name from TOKENIZER_PRESETS.
    """
    if isinstance(config, str):
        if config not in TOKENIZER_PRESETS:
            raise CheckpointError(f"unknown tokenizer preset {config!r}; choose one of {', '.join(TOKENIZER_PRESETS)}")
        config = TOKENIZER_PRESETS[config].config
    path = Path(path)
    state_dict = _tensor_dict(read_torch_weights(path), path, entries=("vae", "state_dict"))
    model = empty_model(BitwiseTokenizer, config)
    load_into(model, map_official(state_dict, official_tokenizer_key), path)
    return model.eval().requires_grad_(False)


def tokenizer_files_for(token_bits: int) -> list[str]:
    """The released tokenizer files whose transformer tokens carry `token_bits` bits: d bits per latent cell, or
    s*s*d when the transformer's 16-pixel token is an s x s patch of cells (Infinity-8B's 8-pixel tokenizer)."""
    files = []
    for preset in TOKENIZER_PRESETS.values():
        s = OFFICIAL_PATCH_SIZE // preset.config.patch_size
        if s * s * preset.config.bits == token_bits:
            files.append(preset.weight_file)
    return files


def check_head_width(state_dict: Mapping[str, torch.Tensor], config: TransformerConfig, path, tokenizer_file) -> None:
    """CheckpointError when the checkpoint's head (2 logits per bit) was trained for another tokenizer than the
    one chosen, naming the tokenizer file the checkpoint needs; otherwise the weights would fail to load with a
    shape mismatch that does not say why, or (an index head) sample nonsense."""
    head = state_dict.get("head.weight")
    if head is None or head.ndim != 2 or head.shape[0] == config.vocab:
        return  # no head: load_into names the missing key
    bits = head.shape[0] // 2
    needed = tokenizer_files_for(bits) if head.shape[0] % 2 == 0 else []
    chosen = f"the chosen tokenizer ({tokenizer_file})" if tokenizer_file else "the chosen tokenizer"
    raise CheckpointError(
        f"{path}: its head has {head.shape[0]} outputs, 2 per bit, so it predicts {bits} bits per token; "
        f"{chosen} gives {config.bits}. This checkpoint needs "
        + (f"the tokenizer file {' or '.join(needed)}" if needed else f"a tokenizer of {bits} bits per token")
    )


def load_official_transformer(
    path: str | os.PathLike,
    config: TransformerConfig | str,
    dtype: torch.dtype = torch.float32,
    tokenizer_file: str | None = None,
) -> Infinity:
    """A released transformer in eval mode: one `.pth` (`infinity_2b_reg.pth`: a plain state dict; a full
    training checkpoint keeps it under trainer/gpt_fsdp) or a sharded directory (`infinity_8b_weights/`).

    `config` is a TransformerConfig or a preset name from TRANSFORMER_PRESETS. `dtype`: of the blocks' parameters,
    the rest fp32 (the official bf16 scheme, `precision.cast_blocks_`); each tensor is converted once while
    loading, straight from the file to its dtype (bfloat16 halves the 8B model's 33 GB). `tokenizer_file`: the
    tokenizer chosen to go with it, named when the checkpoint's head needs another (`check_head_width`).
    """
    if isinstance(config, str):
        if config not in TRANSFORMER_PRESETS:
            raise CheckpointError(
                f"unknown transformer preset {config!r}; choose one of {', '.join(TRANSFORMER_PRESETS)}"
            )
        config = TRANSFORMER_PRESETS[config]
    path = Path(path)
    if path.is_dir() or path.name.endswith(".index.json"):
        state_dict = read_sharded_weights(path)
    else:
        obj = read_torch_weights(path)
        if isinstance(obj, Mapping) and isinstance(obj.get("trainer"), Mapping):
            obj = obj["trainer"]
        state_dict = _tensor_dict(obj, path, entries=("gpt_fsdp",))
    state_dict = official_transformer_state_dict(state_dict)
    check_head_width(state_dict, config, path, tokenizer_file)
    model = cast_blocks_(empty_model(Infinity, config), dtype)
    load_into(model, state_dict, path)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------
# Our own format: safetensors + config JSON in its metadata

_KINDS: dict[str, tuple[type, type]] = {
    "tokenizer": (TokenizerConfig, BitwiseTokenizer),
    "transformer": (TransformerConfig, Infinity),
}


def _kind_of(model: nn.Module) -> str:
    for kind, (_, model_cls) in _KINDS.items():
        if isinstance(model, model_cls):
            return kind
    raise TypeError(f"cannot save a {type(model).__name__}: not one of {[c.__name__ for _, c in _KINDS.values()]}")


def fp16_rounded(model: nn.Module) -> nn.Module:
    """A copy of the model as a 16-bit file ships it: weights rounded to fp16, computed in fp32."""
    return copy.deepcopy(model).half().float()


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's weights and config to one safetensors file (atomically: temporary file + rename)."""
    path = Path(path)
    kind = _kind_of(model)
    metadata = {
        "format": "infinity",
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": json.dumps(model.config.to_dict()),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A model saved by `save_model`, rebuilt from the config in the file, in eval mode."""
    path = Path(path)
    _check_file(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    if metadata.get("format") != "infinity" or metadata.get("kind") not in _KINDS:
        raise CheckpointError(
            f"{path}: not an Infinity model file (its metadata has no known 'kind'; "
            f"official .pth checkpoints load with load_official_tokenizer)"
        )
    config_cls, model_cls = _KINDS[metadata["kind"]]
    try:
        config = config_cls.from_dict(json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid {metadata['kind']} config in the file: {e}") from None
    model = empty_model(model_cls, config)
    load_into(model, state_dict, path)
    return model.to(device).eval()
