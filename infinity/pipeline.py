"""InfinityPipeline: a prompt in, an RGB image out, for the released models and for our own.

    pipe = InfinityPipeline.from_pretrained("infinity-2b")       # or None (the embedded model), or a folder
    out = pipe("a red cube on a wooden table", aspect_ratio="16:9", seed=1)
    out.image.save("cube.png")                                   # PIL RGB; out.bits, out.events, out.seconds
    for event in pipe.stream("a red cube", seed=1):              # one ScaleEvent per scale, with a preview
        ...

Model folders in our format (written by `save_pretrained`) hold `pipeline.json` (text encoder, scale schedules,
sampling defaults, example prompts) beside `tokenizer.safetensors` and `transformer.safetensors` (each with its
config inside). The released models ("infinity-2b", "infinity-8b") use Flan-T5-XL and the official schedules;
their weight files are looked for in a local folder ($INFINITY_WEIGHTS_DIR, or the folder given), then in the
Hugging Face cache, then downloaded from the repo FoundationVision/Infinity.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from .checkpoints import CheckpointError, load_model, load_official_tokenizer, load_official_transformer, save_model
from .images import fit, to_pil, to_tensor
from .sampling import Intervention, ScaleEvent, StageTimer, sample_scales, untimed
from .schedules import ASPECT_RATIOS, Schedule, get_schedule
from .text import FLAN_T5_XL, MiniLMTextEncoder, T5TextEncoder, TextEncoder
from .tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer, TokenizerConfig
from .tokenizer.model import latent_scales, patchify_bits, spatial_patch
from .transformer import TRANSFORMER_PRESETS, Infinity, TransformerConfig

logger = logging.getLogger(__name__)

OFFICIAL_REPO = "FoundationVision/Infinity"
WEIGHTS_DIR_ENV = "INFINITY_WEIGHTS_DIR"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "embedded"
PIPELINE_FILE, TOKENIZER_FILE, TRANSFORMER_FILE = "pipeline.json", "tokenizer.safetensors", "transformer.safetensors"
FORMAT, FORMAT_VERSION = "infinity-pipeline", 1
MAX_PROMPT_CHARS = 2000  # longer prompts are refused; within it the text encoder truncates to its max_length tokens
MAX_SEED = 2**63 - 1
PROMPT_CACHE_SIZE = 8  # prompts whose text features a pipeline keeps (a few KB to a few MB each)


class WeightsNotFoundError(FileNotFoundError):
    """The model's files are not on this machine and could not be downloaded; the message says where to put them."""


# ---- input checks ----


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_cfg(name: str, value) -> float:
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0 (1 disables guidance), got {value}")
    return float(value)


def _check_tau(name: str, value) -> float:
    if _number(name, value) <= 0:
        raise ValueError(f"{name} (temperature) must be > 0, got {value}")
    return float(value)


def _check_top_k(value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {value!r}")


def _check_top_p(value) -> None:
    if not 0.0 <= _number("top_p", value) <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {value}")


def _per_scale(name: str, values, K: int, check) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list of {K} numbers (one per scale), got {values!r}")
    if len(values) != K:
        raise ValueError(f"{name} needs one value per scale: {K} for this aspect ratio, got {len(values)}")
    return [check(f"{name}[{k}]", v) for k, v in enumerate(values)]


def check_inputs(prompt, negative_prompt="", cfg=None, tau=None, top_k=None, top_p=None, seed=0) -> None:
    """ValueError naming the first input no model accepts (options at None are not checked). The aspect ratio
    and per-scale lists depend on the model: `InfinityPipeline.stream` checks those too."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    if not isinstance(negative_prompt, str) or len(negative_prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    if cfg is not None:
        _check_cfg("cfg", cfg)
    if tau is not None:
        _check_tau("tau", tau)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)


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


@dataclass(frozen=True)
class SamplingDefaults:
    """What `pipe(...)` uses for every sampling option left at None."""

    cfg: float = 3.0  # classifier-free guidance weight; 1 disables guidance
    tau: float = 1.0  # temperature dividing the bit logits
    top_k: int = 0  # per-bit top-k, 0 off (a bit has 2 values, so any k >= 2 keeps both)
    top_p: float = 0.0  # per-bit top-p, 0 off
    cfg_schedule: tuple[float, ...] | None = None  # one cfg per scale; replaces cfg when set
    tau_schedule: tuple[float, ...] | None = None  # one tau per scale; replaces tau when set

    def __post_init__(self) -> None:
        _check_cfg("cfg", self.cfg)
        _check_tau("tau", self.tau)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        for name, check in (("cfg_schedule", _check_cfg), ("tau_schedule", _check_tau)):
            values = getattr(self, name)
            if values is not None:
                object.__setattr__(self, name, tuple(_per_scale(name, values, len(values), check)))


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
OFFICIAL_MODELS: dict[str, OfficialModel] = {
    "infinity-2b": OfficialModel(
        title="Infinity-2B",
        tokenizer=TOKENIZER_PRESETS["infinity-vae-d32reg"].config,
        tokenizer_file=TOKENIZER_PRESETS["infinity-vae-d32reg"].weight_file,
        transformer=TRANSFORMER_PRESETS["infinity-2b"],
        transformer_weights="infinity_2b_reg.pth",
        sharded=False,
        defaults=SamplingDefaults(cfg=3.0, tau=0.5, top_k=900, top_p=0.97),
    ),
    "infinity-8b": OfficialModel(
        title="Infinity-8B",
        tokenizer=TOKENIZER_PRESETS["infinity-vae-d56-f8"].config,
        tokenizer_file=TOKENIZER_PRESETS["infinity-vae-d56-f8"].weight_file,
        transformer=TRANSFORMER_PRESETS["infinity-8b"],
        transformer_weights="infinity_8b_weights",
        sharded=True,
        defaults=SamplingDefaults(cfg=3.0, tau=1.0, top_k=900, top_p=0.97),
    ),
}
OFFICIAL_EXAMPLES = (
    "a red fox sitting in fresh snow, morning light",
    "a bowl of ramen on a wooden table, studio photo",
    "a lighthouse on a cliff during a storm, oil painting",
)


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
        The transformer is cast to `dtype`; the tokenizer stays fp32 (the sampler sums F and decodes in fp32).
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
        self.transformer = transformer.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.text_encoder, self.offload_text_encoder = text_encoder, offload_text_encoder
        self.defaults, self.name, self.examples = defaults, name, tuple(examples)
        self._prompts: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # see encode_prompt

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

        device: default CUDA when available. dtype: default bf16 on CUDA for the released models (as the official
        inference), fp32 otherwise. text_encoder_device: default `device`; "cpu" keeps it there; "offload" keeps
        it on the CPU and moves it to `device` only while encoding. local_files_only / cache_dir: for the Hugging
        Face hub (official weights and Flan-T5).
        """
        device = _pick_device(device)
        options = dict(
            device=device, dtype=dtype, text_encoder_device=text_encoder_device, local_files_only=local_files_only
        )
        if name_or_dir is None:
            if not EMBEDDED_DIR.is_dir():
                raise WeightsNotFoundError(
                    f"the embedded model {EMBEDDED_DIR} is not in this checkout (it is produced by training); "
                    f"pass a model name ({', '.join(OFFICIAL_MODELS)}) or a model folder"
                )
            return cls._from_folder(EMBEDDED_DIR, **options)
        if str(name_or_dir) in OFFICIAL_MODELS:
            env_dir = os.environ.get(WEIGHTS_DIR_ENV)
            return cls._from_official(str(name_or_dir), Path(env_dir) if env_dir else None, cache_dir, **options)
        path = Path(name_or_dir)
        if (path / PIPELINE_FILE).is_file():
            return cls._from_folder(path, **options)
        if path.is_dir():
            return cls._from_official(_official_model_in(path), path, cache_dir, **options)
        raise WeightsNotFoundError(
            f"{name_or_dir}: neither a model name ({', '.join(OFFICIAL_MODELS)}) nor a model folder"
        )

    @classmethod
    def _from_folder(cls, folder: Path, device, dtype, text_encoder_device, local_files_only) -> InfinityPipeline:
        config = _read_pipeline_json(folder / PIPELINE_FILE)
        tokenizer = _load_part(folder / TOKENIZER_FILE, BitwiseTokenizer)
        transformer = _load_part(folder / TRANSFORMER_FILE, Infinity)
        text_encoder, offload = _load_text_encoder(
            config["text_encoder"], device, text_encoder_device, local_files_only
        )
        logger.info("loaded %s from %s", folder.name, folder)
        return cls(
            tokenizer, transformer, text_encoder, config["schedules"], config["defaults"], folder.name,
            device, dtype or torch.float32, examples=config["examples"], offload_text_encoder=offload,
        )

    @classmethod
    def _from_official(
        cls, name: str, weights_dir: Path | None, cache_dir, device, dtype, text_encoder_device, local_files_only
    ) -> InfinityPipeline:
        model = OFFICIAL_MODELS[name]
        paths = _official_weights(model, weights_dir, cache_dir, local_files_only)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        tokenizer = load_official_tokenizer(paths[model.tokenizer_file], model.tokenizer)
        # Built on the meta device and given the file's (memory-mapped) tensors converted once to `dtype`;
        # __init__ then moves that one copy to the device.
        transformer = load_official_transformer(paths[model.transformer_weights], model.transformer, dtype)
        text_encoder, offload = _load_text_encoder(
            {"kind": "t5", "name": model.text_encoder}, device, text_encoder_device, local_files_only
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
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type.upper()

    def schedule(self, aspect_ratio: str) -> Schedule:
        if not isinstance(aspect_ratio, str) or aspect_ratio not in self.schedules:
            raise ValueError(f"unknown aspect ratio {aspect_ratio!r}; this model has {', '.join(self.schedules)}")
        return self.schedules[aspect_ratio]

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features (1, T, E) and length (1,) of one prompt, on the pipeline's device.

        The last PROMPT_CACHE_SIZE prompts are remembered: generating again with another seed or option (what
        the app does most) skips the text encoder. The tensors are shared: treat them as read-only.
        """
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
        options = self._sampling_options(schedule.num_scales, cfg, tau, top_k, top_p, cfg_schedule, tau_schedule)

        # 2. Encode the prompts.
        with (timer or untimed)("text_encoding", None):
            text_BTE, lens_B = self.encode_prompt(prompt)
            negative = self.encode_prompt(negative_prompt) if negative_prompt.strip() else (None, None)
        negative_BTE, negative_lens_B = negative

        # 3. Sample. The official sampler returns BGR uint8; ours gives RGB in [-1, 1], nothing to swap.
        return sample_scales(
            self.transformer, self.tokenizer, text_BTE, lens_B, schedule,
            generator=torch.Generator(self.device).manual_seed(seed),
            negative_text_BTE=negative_BTE, negative_lens_B=negative_lens_B,
            prefix_bits=prefix_bits, intervention=intervention, preview=preview, timer=timer, **options,
        )

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
    ) -> PipelineOutput:
        """Generate one image; the same seed and options give the same image on the same device."""
        start = time.perf_counter()
        events = list(self.stream(
            prompt, negative_prompt, aspect_ratio, cfg, tau, top_k, top_p, seed, cfg_schedule, tau_schedule,
            preview=False,
        ))
        image = to_pil(events[-1].image_B3HW[0])
        seconds = time.perf_counter() - start
        logger.info("%dx%d image in %.2f s on %s", image.width, image.height, seconds, self.device_name)
        return PipelineOutput(
            image, seed, seconds, self.schedules[aspect_ratio], [e.bits_Bhwd.cpu() for e in events], events
        )

    def _sampling_options(self, K: int, cfg, tau, top_k, top_p, cfg_schedule, tau_schedule) -> dict:
        """The sampler's cfg_schedule / tau / top_k / top_p: the model's defaults where None, one cfg and tau per
        scale (a schedule replaces the scalar), per-scale values checked."""
        d = self.defaults
        if cfg_schedule is None and cfg is None:
            cfg, cfg_schedule = d.cfg, d.cfg_schedule
        if tau_schedule is None and tau is None:
            tau, tau_schedule = d.tau, d.tau_schedule
        cfg_K = [cfg] * K if cfg_schedule is None else cfg_schedule
        tau_K = [tau] * K if tau_schedule is None else tau_schedule
        return dict(
            cfg_schedule=_per_scale("cfg_schedule", cfg_K, K, _check_cfg),
            tau=_per_scale("tau_schedule", tau_K, K, _check_tau),
            top_k=d.top_k if top_k is None else int(top_k),
            top_p=d.top_p if top_p is None else float(top_p),
        )


# ---- components ----


def _check_schedules(
    schedules: dict[str, Schedule],
    tokenizer: TokenizerConfig,
    transformer: TransformerConfig,
    defaults: SamplingDefaults,
    spatial_patch: int,
) -> None:
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


def official_schedules(budget: str) -> dict[str, Schedule]:
    """Every official aspect-ratio template at one pixel budget."""
    return {name: get_schedule(name, budget) for name in ASPECT_RATIOS}


def _load_part(path: Path, kind: type):
    model = load_model(path)
    if not isinstance(model, kind):
        raise CheckpointError(f"{path}: holds a {type(model).__name__}, expected {kind.__name__}")
    return model


def _load_text_encoder(spec: dict, device: torch.device, text_encoder_device, local_files_only: bool):
    """(encoder, offload) from a pipeline.json "text_encoder" entry."""
    offload = text_encoder_device == "offload"
    where = torch.device("cpu") if offload else _pick_device(text_encoder_device or device)
    if spec["kind"] == "minilm":
        return MiniLMTextEncoder.from_pretrained(device=where, max_length=spec["max_length"]), offload
    # Offloaded T5 runs on the accelerator, so it keeps the accelerator's fp16 while it waits on the CPU.
    dtype = torch.float16 if offload and device.type == "cuda" else None
    encoder = T5TextEncoder.from_pretrained(spec["name"], device=where, dtype=dtype, local_files_only=local_files_only)
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


# ---- official weights: local folder, then the Hugging Face cache, then a download ----


def _official_model_in(folder: Path) -> str:
    """The released model whose transformer weights `folder` holds."""
    names = [name for name, m in OFFICIAL_MODELS.items() if (folder / m.transformer_weights).exists()]
    if len(names) == 1:
        return names[0]
    if not names:
        wanted = ", ".join(m.transformer_weights for m in OFFICIAL_MODELS.values())
        raise WeightsNotFoundError(f"{folder}: no {PIPELINE_FILE} (our format) and no official weights ({wanted})")
    raise ValueError(
        f"{folder} holds the weights of {', '.join(names)}: pass the model name and set {WEIGHTS_DIR_ENV}={folder}"
    )


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


def _find_weights(name: str, folder: bool, weights_dir: Path | None, cache_dir, local_files_only: bool) -> Path:
    if weights_dir is not None and (weights_dir / name).exists():
        return weights_dir / name
    try:
        return _hub_path(name, folder, cache_dir, local_files_only=True)
    except FileNotFoundError:
        if local_files_only:
            raise
    logger.info("downloading %s from %s", name, OFFICIAL_REPO)
    return _hub_path(name, folder, cache_dir, local_files_only=False)


def _official_weights(
    model: OfficialModel, weights_dir: Path | None, cache_dir, local_files_only: bool
) -> dict[str, Path]:
    """Path of each weight file of `model`, or one WeightsNotFoundError naming every missing file."""
    wanted = {model.tokenizer_file: False, model.transformer_weights: model.sharded}
    found, reasons = {}, []
    for name, folder in wanted.items():
        try:
            found[name] = _find_weights(name, folder, weights_dir, cache_dir, local_files_only)
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
