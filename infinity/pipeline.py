"""InfinityPipeline: a prompt in, an RGB image out, for the released models and for our own.

    pipe = InfinityPipeline.from_pretrained("infinity-2b")       # or None (the embedded model), or a folder
    out = pipe("a red cube on a wooden table", aspect_ratio="16:9", seed=1)
    out.image.save("cube.png")                                   # PIL RGB; out.bits, out.events, out.seconds
    for event in pipe.stream("a red cube", seed=1):              # one ScaleEvent per scale, with a preview
        ...

A pipeline holds a tokenizer, a transformer, a text encoder (`text.py`), a scale schedule per aspect ratio and
sampling defaults (`options.py`, which also checks the inputs). `stream` encodes the prompts (the last few are
cached) and runs the next-scale sampler (`sampling.py`); `__call__` consumes that stream into a PipelineOutput.

Model folders in our format (written by `save_pretrained`, e.g. the embedded model in assets/embedded) hold
`pipeline.json` (text encoder, scale schedules, sampling defaults, example prompts) beside `tokenizer.safetensors`
and `transformer.safetensors` (each with its config inside). The released models ("infinity-2b", "infinity-8b"):
their architectures, defaults and weight files (in $INFINITY_WEIGHTS_DIR, the folder given, the Hugging Face cache
or downloaded) are in `official.py`; `checkpoints.py` maps their key names to ours.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from .checkpoints import CheckpointError, load_model, save_model
from .images import fit, to_pil, to_tensor
from .official import (
    OFFICIAL_EXAMPLES,
    OFFICIAL_MODELS,
    WeightsNotFoundError,
    load_official,
    official_model_in,
)
from .options import SamplingDefaults, check_inputs, sampler_options
from .precision import auto_dtype, autocast_events, cast_blocks_, compute_dtype, precision_name, quantize_int8_
from .sampling import Intervention, ScaleEvent, StageTimer, sample_scales, untimed
from .schedules import Schedule, official_schedules
from .text import MiniLMTextEncoder, T5TextEncoder, TextEncoder
from .tokenizer import BitwiseTokenizer, TokenizerConfig
from .tokenizer.model import latent_scales, patchify_bits, spatial_patch
from .transformer import Infinity, TransformerConfig

logger = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "embedded"
PIPELINE_FILE, TOKENIZER_FILE, TRANSFORMER_FILE = "pipeline.json", "tokenizer.safetensors", "transformer.safetensors"
FORMAT, FORMAT_VERSION = "infinity-pipeline", 1
PROMPT_CACHE_SIZE = 8  # prompts whose text features a pipeline keeps (a few KB to a few MB each)


def _pick_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this machine has no usable CUDA GPU; use cpu")
    return device


@dataclass
class PipelineOutput:
    image: Image.Image  # RGB, schedule.pixel_hw in size
    seed: int
    seconds: float  # wall time of the call, text encoding included
    schedule: Schedule
    bits: list[torch.Tensor]  # (1, h_k, w_k, d) uint8 per scale, on the CPU (usable as prefix_bits)
    events: list[ScaleEvent]  # the sampler's events, one per scale


class InfinityPipeline:
    """Tokenizer + transformer + text encoder + the schedules of each aspect ratio + sampling defaults."""

    def __init__(
        self,
        tokenizer: BitwiseTokenizer,
        transformer: Infinity,
        text_encoder: TextEncoder,
        schedules: dict[str, Schedule] | None,
        defaults: SamplingDefaults,
        name: str,
        device: torch.device | str,
        dtype: torch.dtype,
        examples: Sequence[str] = (),
        offload_text_encoder: bool = False,
    ):
        """schedules: aspect-ratio name -> Schedule; None for the official templates at the 1M budget.
        dtype: of the transformer's blocks; the rest of it stays fp32 and runs under autocast (the official bf16
        scheme, `precision.py`). The tokenizer stays fp32 (the sampler sums F and decodes in fp32).
        offload_text_encoder: keep the encoder on the CPU and move it to `device` only while encoding."""
        self.spatial_patch = spatial_patch(transformer.config.bits, tokenizer.bits)  # 2 for Infinity-8B, else 1
        self.schedules = official_schedules("1M") if schedules is None else dict(schedules)
        _check_schedules(self.schedules, tokenizer.config, transformer.config, defaults, self.spatial_patch)
        E, max_len = transformer.config.text_channels, transformer.config.text_maxlen
        if text_encoder.channels != E or text_encoder.max_length > max_len:
            raise ValueError(
                f"the text encoder gives {text_encoder.channels} channels and up to {text_encoder.max_length} "
                f"tokens; the transformer takes {E} channels and at most {max_len} tokens"
            )
        self.device, self.dtype = torch.device(device), dtype
        prepare_device(self.device)
        self.transformer = cast_blocks_(transformer.to(self.device), dtype).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.text_encoder, self.offload_text_encoder = text_encoder, offload_text_encoder
        if offload_text_encoder and self.device.type == "cuda":
            text_encoder.pin_host_copy()
        self.defaults, self.name, self.examples = defaults, name, tuple(examples)
        self._prompts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # see encode_prompt
        # Held while a prompt is encoded: concurrent requests must not move an offloaded encoder away from under
        # each other, nor change the prompt cache while another reads it.
        self._text_lock = threading.Lock()

    # ---- loading and saving ----

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        text_encoder_device: torch.device | str | None = None,
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> InfinityPipeline:
        """The embedded model (None), a released model by name, or a folder: ours (pipeline.json) or one holding
        official weight files.

        device: default CUDA when available. dtype: of the transformer's blocks; default (`precision.auto_dtype`)
        bf16 for the released models on CUDA (as the official inference) and on CPUs that multiply bf16 natively,
        fp32 otherwise. text_encoder_device: default `device`; "cpu" keeps it there; "offload" keeps
        it on the CPU and moves it to `device` only while encoding. local_files_only / cache_dir: for the Hugging
        Face hub (official weights and Flan-T5).
        """
        device = _pick_device(device)
        options = dict(device=device, dtype=dtype, text_encoder_device=text_encoder_device,
                       local_files_only=local_files_only, cache_dir=cache_dir)
        if name_or_dir is None:
            if not EMBEDDED_DIR.is_dir():
                raise WeightsNotFoundError(
                    f"the embedded model {EMBEDDED_DIR} is not in this checkout (it is produced by training); "
                    f"pass a model name ({', '.join(OFFICIAL_MODELS)}) or a model folder"
                )
            return cls._from_folder(EMBEDDED_DIR, **options)
        if str(name_or_dir) in OFFICIAL_MODELS:
            return cls._from_official(str(name_or_dir), None, **options)  # weights in $INFINITY_WEIGHTS_DIR
        path = Path(name_or_dir)
        if (path / PIPELINE_FILE).is_file():
            return cls._from_folder(path, **options)
        if path.is_dir():
            name = official_model_in(path)
            if name is None:
                wanted = ", ".join(m.transformer_weights for m in OFFICIAL_MODELS.values())
                raise WeightsNotFoundError(f"{path}: no {PIPELINE_FILE} (our format) and no official weights ({wanted})")
            return cls._from_official(name, path, **options)
        raise WeightsNotFoundError(
            f"{name_or_dir}: neither a model name ({', '.join(OFFICIAL_MODELS)}) nor a model folder"
        )

    @classmethod
    def _from_folder(
        cls, folder: Path, device, dtype, text_encoder_device, local_files_only, cache_dir
    ) -> InfinityPipeline:
        config = _read_pipeline_json(folder / PIPELINE_FILE)
        tokenizer = _load_part(folder / TOKENIZER_FILE, BitwiseTokenizer)
        transformer = _load_part(folder / TRANSFORMER_FILE, Infinity)
        text_encoder, offload = _load_text_encoder(
            config["text_encoder"], device, text_encoder_device, local_files_only, cache_dir
        )
        logger.info("loaded %s from %s", folder.name, folder)
        return cls(
            tokenizer, transformer, text_encoder, config["schedules"], config["defaults"], folder.name,
            device, dtype or auto_dtype(device, released=False), examples=config["examples"], offload_text_encoder=offload,
        )

    @classmethod
    def _from_official(
        cls, name: str, weights_dir: Path | None, device, dtype, text_encoder_device, local_files_only, cache_dir
    ) -> InfinityPipeline:
        model = OFFICIAL_MODELS[name]
        dtype = dtype or auto_dtype(device, released=True)
        tokenizer, transformer = load_official(model, weights_dir, cache_dir, local_files_only, dtype)
        text_encoder, offload = _load_text_encoder(
            {"kind": "t5", "name": model.text_encoder}, device, text_encoder_device, local_files_only, cache_dir
        )
        logger.info("loaded %s (%s, %s)", model.title, device, dtype)
        return cls(
            tokenizer, transformer, text_encoder, official_schedules(model.budget), model.defaults, name,
            device, dtype, examples=OFFICIAL_EXAMPLES, offload_text_encoder=offload,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the folder `from_pretrained` reads: pipeline.json, tokenizer.safetensors, transformer.safetensors."""
        folder = Path(folder)
        save_model(self.tokenizer, folder / TOKENIZER_FILE)
        save_model(self.transformer, folder / TRANSFORMER_FILE)
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "text_encoder": _text_encoder_spec(self.text_encoder),
            "patch_size": self.tokenizer.config.patch_size * self.spatial_patch,  # pixels per token side
            "schedules": {name: [list(hw) for hw in s.scales] for name, s in self.schedules.items()},
            "defaults": asdict(self.defaults),
            "examples": list(self.examples),
        }
        (folder / PIPELINE_FILE).write_text(json.dumps(config, indent=1))
        return folder

    # ---- generation ----

    @property
    def aspect_ratios(self) -> list[str]:
        return list(self.schedules)

    @property
    def device_name(self) -> str:
        """The GPU's name once CUDA is up, else the device type. It never initialises CUDA itself: on a ZeroGPU
        Space that may only happen inside a GPU call."""
        if self.device.type == "cuda" and torch.cuda.is_initialized():
            return torch.cuda.get_device_name(self.device)
        return self.device.type.upper()

    def quantize_int8(self) -> InfinityPipeline:
        """Opt-in for CPUs: the transformer's block Linear layers as dynamically quantized int8 (`precision.py`).
        The pipeline must be fp32 on the CPU. Returns the pipeline."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise ValueError(f"int8 needs an fp32 pipeline on the CPU, this one is {self.dtype} on {self.device}")
        quantize_int8_(self.transformer.blocks)
        return self

    @property
    def precision(self) -> str:
        """What the transformer's blocks compute in: "float32", "bfloat16", "float16" or "int8"."""
        return precision_name(self.transformer)

    def schedule(self, aspect_ratio: str) -> Schedule:
        if not isinstance(aspect_ratio, str) or aspect_ratio not in self.schedules:
            raise ValueError(f"unknown aspect ratio {aspect_ratio!r}; this model has {', '.join(self.schedules)}")
        return self.schedules[aspect_ratio]

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features (1, T, E) and length (1,) of one prompt, on the pipeline's device.

        The last PROMPT_CACHE_SIZE prompts are remembered: generating again with another seed or option (what
        the app does most) skips the text encoder. The tensors are shared: treat them as read-only. Safe to call
        from several threads (the app's concurrency): one prompt is encoded at a time.
        """
        with self._text_lock:
            if prompt in self._prompts:
                self._prompts.move_to_end(prompt)
                return self._prompts[prompt]
            if self.offload_text_encoder:
                self.text_encoder.to(self.device)
            try:
                text_BTE, lens_B = self.text_encoder.encode([prompt])
            finally:
                if self.offload_text_encoder:
                    self.text_encoder.to("cpu")
            self._prompts[prompt] = text_BTE.to(self.device), lens_B.to(self.device)
            while len(self._prompts) > PROMPT_CACHE_SIZE:
                self._prompts.popitem(last=False)
            return self._prompts[prompt]

    @torch.no_grad()
    def encode_image(self, image: Image.Image, aspect_ratio: str = "1:1") -> list[torch.Tensor]:
        """The tokenizer's bits of `image` resized and center-cropped to the aspect ratio's size, per transformer
        token as the sampler's events carry them: (1, h_k, w_k, d) uint8 per scale, on the CPU. A prefix for
        `stream`, or the ground truth of self-correction views."""
        schedule, s = self.schedule(aspect_ratio), self.spatial_patch
        x_13HW = to_tensor(fit(image.convert("RGB"), schedule.pixel_hw)).to(self.device)
        codes = self.tokenizer.encode_scales(x_13HW, latent_scales(schedule.scales, s))
        return [patchify_bits(bits, s).cpu() for bits in codes.bits]

    def stream(
        self,
        prompt: str,
        negative_prompt: str = "",
        aspect_ratio: str = "1:1",
        cfg: float | None = None,
        tau: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        cfg_schedule: Sequence[float] | None = None,
        tau_schedule: Sequence[float] | None = None,
        preview: bool = True,
        prefix_bits: Sequence[torch.Tensor] | None = None,
        intervention: Intervention | None = None,
        timer: StageTimer | None = None,
    ) -> Iterator[ScaleEvent]:
        """The sampler's events, one per scale (see `sample_scales`); inputs are checked and the prompts encoded
        now, the scales run as the iterator is consumed.

        Options left at None take the model's defaults; a cfg_schedule / tau_schedule (one value per scale)
        replaces cfg / tau. An empty negative prompt means the learned unconditional text (as released).
        timer: entered around the text encoding (`"text_encoding"`) and every stage of the sampler (benchmarks).
        """
        # 1. Check the inputs.
        check_inputs(prompt, negative_prompt, cfg, tau, top_k, top_p, seed)
        schedule = self.schedule(aspect_ratio)
        options = sampler_options(
            self.defaults, schedule.num_scales, cfg, tau, top_k, top_p, cfg_schedule, tau_schedule
        )

        # 2. Encode the prompts.
        with (timer or untimed)("text_encoding", None):
            text_BTE, lens_B = self.encode_prompt(prompt)
            negative = self.encode_prompt(negative_prompt) if negative_prompt.strip() else (None, None)
        negative_BTE, negative_lens_B = negative

        # 3. Sample, the blocks under autocast to their dtype. The official sampler returns BGR uint8; ours gives
        #    RGB in [-1, 1], nothing to swap.
        events = sample_scales(
            self.transformer, self.tokenizer, text_BTE, lens_B, schedule,
            generator=torch.Generator(self.device).manual_seed(seed),
            negative_text_BTE=negative_BTE, negative_lens_B=negative_lens_B,
            prefix_bits=prefix_bits, intervention=intervention, preview=preview, timer=timer, **options,
        )
        return autocast_events(events, self.device, compute_dtype(self.transformer))

    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        aspect_ratio: str = "1:1",
        cfg: float | None = None,
        tau: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        cfg_schedule: Sequence[float] | None = None,
        tau_schedule: Sequence[float] | None = None,
        prefix_bits: Sequence[torch.Tensor] | None = None,
    ) -> PipelineOutput:
        """Generate one image; the same seed and options give the same image on the same device.
        prefix_bits: the bits of the first scales, kept instead of sampled (as in `stream`)."""
        start = time.perf_counter()
        events = list(self.stream(
            prompt, negative_prompt, aspect_ratio, cfg, tau, top_k, top_p, seed, cfg_schedule, tau_schedule,
            preview=False, prefix_bits=prefix_bits,
        ))
        image = to_pil(events[-1].image_B3HW[0])
        seconds = time.perf_counter() - start
        logger.info("%dx%d image in %.2f s on %s", image.width, image.height, seconds, self.device_name)
        return PipelineOutput(
            image, seed, seconds, self.schedules[aspect_ratio], [e.bits_Bhwd.cpu() for e in events], events
        )


# ---- components ----


def prepare_device(device: torch.device) -> None:
    """CUDA: fp32 matmuls and convolutions (the VAE, an fp32 transformer) on TF32 tensor cores, as PyTorch's
    `set_float32_matmul_precision("high")` asks; a 10-bit mantissa is far below what sampling bits can tell."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _check_schedules(
    schedules: dict[str, Schedule], tokenizer: TokenizerConfig, transformer: TransformerConfig,
    defaults: SamplingDefaults, spatial_patch: int,
) -> None:
    """ValueError unless every schedule fits the models (pixels per token, scales) and the default schedules."""
    if not schedules:
        raise ValueError("a pipeline needs at least one aspect-ratio schedule")
    token_px = tokenizer.patch_size * spatial_patch  # pixels per transformer token side
    for name, schedule in schedules.items():
        if schedule.patch_size != token_px:
            raise ValueError(f"schedule {name!r} has {schedule.patch_size} px per token, the models {token_px}")
        if schedule.num_scales > transformer.max_scales:
            raise ValueError(
                f"schedule {name!r} has {schedule.num_scales} scales, the transformer at most {transformer.max_scales}"
            )
        for field_name in ("cfg_schedule", "tau_schedule"):
            values = getattr(defaults, field_name)
            if values is not None and len(values) != schedule.num_scales:
                raise ValueError(
                    f"default {field_name} has {len(values)} values, schedule {name!r} {schedule.num_scales} scales"
                )


def _load_part(path: Path, kind: type):
    model = load_model(path)
    if not isinstance(model, kind):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, expected {kind.__name__}")
    return model


def _load_text_encoder(spec: dict, device: torch.device, text_encoder_device, local_files_only: bool, cache_dir):
    """(encoder, offload) from a pipeline.json "text_encoder" entry."""
    offload = text_encoder_device == "offload"
    where = torch.device("cpu") if offload else _pick_device(text_encoder_device or device)
    if spec["kind"] == "minilm":
        return MiniLMTextEncoder.from_pretrained(device=where, max_length=spec["max_length"]), offload
    # Offloaded T5 runs on the accelerator, so it keeps the accelerator's fp16 while it waits on the CPU.
    dtype = torch.float16 if offload and device.type == "cuda" else None
    encoder = T5TextEncoder.from_pretrained(
        spec["name"], device=where, dtype=dtype, local_files_only=local_files_only, cache_dir=cache_dir
    )
    return encoder, offload


def _text_encoder_spec(encoder: TextEncoder) -> dict:
    if isinstance(encoder, MiniLMTextEncoder):
        return {"kind": "minilm", "max_length": encoder.max_length}
    if isinstance(encoder, T5TextEncoder):
        return {"kind": "t5", "name": encoder.model.config.name_or_path}
    raise TypeError(f"cannot save a pipeline with a {type(encoder).__name__} text encoder")


# ---- pipeline.json ----

_JSON_KEYS = {"format", "version", "text_encoder", "patch_size", "schedules", "defaults", "examples"}
_TEXT_ENCODER_KEYS = {"minilm": {"kind", "max_length"}, "t5": {"kind", "name"}}


def _exact_keys(what: str, d, keys: set[str]) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    missing, unknown = sorted(keys - set(d)), sorted(set(d) - keys)
    if missing or unknown:
        problems = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
        raise ValueError(f"{what}: {'; '.join(problems)}")


def _read_pipeline_json(path: Path) -> dict:
    """pipeline.json checked and turned into objects: schedules -> Schedule, defaults -> SamplingDefaults."""
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such file (a model folder holds {PIPELINE_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file: {e}") from None
    try:
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f'not an Infinity pipeline file (expected "format": "{FORMAT}")')
        if config.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported version {config.get('version')!r} (this code reads {FORMAT_VERSION})")
        _exact_keys("pipeline.json", config, _JSON_KEYS)
        encoder = config["text_encoder"]
        kind = encoder.get("kind") if isinstance(encoder, dict) else None
        if kind not in _TEXT_ENCODER_KEYS:
            raise ValueError(f"text_encoder.kind must be one of {sorted(_TEXT_ENCODER_KEYS)}, got {kind!r}")
        _exact_keys("text_encoder", encoder, _TEXT_ENCODER_KEYS[kind])
        if kind == "minilm" and not _positive_int(encoder["max_length"]):
            raise ValueError(f"text_encoder.max_length must be a positive integer, got {encoder['max_length']!r}")
        if kind == "t5" and not isinstance(encoder["name"], str):
            raise ValueError(f"text_encoder.name must be a model name or folder, got {encoder['name']!r}")
        patch = config["patch_size"]
        if not isinstance(config["schedules"], dict):
            raise ValueError("schedules must map aspect-ratio names to lists of [h, w] grids")
        config["schedules"] = {name: _custom_schedule(grids, patch) for name, grids in config["schedules"].items()}
        _exact_keys("defaults", config["defaults"], {f.name for f in fields(SamplingDefaults)})
        config["defaults"] = SamplingDefaults(**config["defaults"])
        if not isinstance(config["examples"], list) or not all(isinstance(p, str) for p in config["examples"]):
            raise ValueError("examples must be a list of prompt strings")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _custom_schedule(grids, patch_size) -> Schedule:
    """A schedule of our own grids; its template is h/w of the last grid (RoPE stretches onto that template)."""
    if not _positive_int(patch_size):
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if not isinstance(grids, list) or not grids or not all(
        isinstance(g, list) and len(g) == 2 and all(_positive_int(v) for v in g) for g in grids
    ):
        raise ValueError(f"a schedule must be a non-empty list of [h, w] grids of positive integers, got {grids!r}")
    H, W = grids[-1]
    return Schedule(scales=tuple(map(tuple, grids)), patch_size=patch_size, h_div_w=round(H / W, 3))
