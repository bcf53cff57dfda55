"""The pipelines the benchmark runs: the embedded model, our tiny test model, and the released 125M / 2B / 8B models,
with random weights of the exact shapes wherever the real weights are not on this machine.

Speed does not depend on the values of the weights, so a random model of the right config times like the trained
one. Large models are built on the meta device and then given storage where they will run (`to_empty`) and
filled in place (`fill_random_`): a 2B-parameter transformer never exists twice. The released models' text
encoder, Flan-T5-XL, is replaced by a T5 encoder of the same sizes with random weights fed random token ids
(`RandomTokens`), so nothing is downloaded.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..official import OFFICIAL_MODELS, WeightsNotFoundError
from ..options import SamplingDefaults
from ..pipeline import EMBEDDED_DIR, InfinityPipeline
from ..precision import INT8, auto_dtype, cast_blocks_, quantize_int8_
from ..schedules import official_schedules
from ..text import MiniLMTextEncoder, T5TextEncoder
from ..tokenizer import BitwiseTokenizer
from ..train.recipes import RECIPES
from ..transformer import Infinity

logger = logging.getLogger(__name__)

PRESETS = ("embedded", "shapes-tiny", *OFFICIAL_MODELS)
# Flan-T5-XL's encoder (google/flan-t5-xl config.json): 1.2 B parameters, 2048 channels.
FLAN_T5_XL_SIZES = dict(
    d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64, vocab_size=32128, feed_forward_proj="gated-gelu"
)
PROMPT_TOKENS = 32  # a typical prompt of the official examples is 20-40 T5 tokens
SHAPES_DEFAULTS = SamplingDefaults(cfg=3.0, tau=1.0, top_k=0, top_p=0.0)  # our small models: guidance on


@dataclass
class BenchModel:
    """A pipeline to time, and how it was made (printed with the results)."""

    pipe: InfinityPipeline
    weights: str  # "loaded from ..." or "random"
    notes: list[str] = field(default_factory=list)


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int, std: float = 0.02, prefix: str = "") -> nn.Module:
    """Fill every parameter in place: norm scales (1-D `weight`s) with 1, everything else with N(0, std).

    Finite, ordinary values, so that no kernel meets NaNs or denormals (which would time differently). Each
    parameter's values depend only on the seed and its name (`prefix` + its name in `module`), drawn in fp32 and
    then cast: a model built in bf16, or part by part, holds the rounded values of the same fp32 model, so images
    of different precisions can be compared.
    """
    for name, p in module.named_parameters():
        if p.ndim == 1 and name.endswith("weight"):
            p.fill_(1.0)
        else:
            generator = torch.Generator(p.device).manual_seed(seed * 1_000_003 + zlib.crc32((prefix + name).encode()))
            if p.dtype == torch.float32:
                p.normal_(0.0, std, generator=generator)
            else:
                p.copy_(torch.empty(p.shape, device=p.device).normal_(0.0, std, generator=generator))
    return module


def random_model(build, device: torch.device, dtype: torch.dtype | None, seed: int = 0) -> nn.Module:
    """`build()` on the meta device, then storage on `device` in `dtype` (None: the dtypes `build` gave) and
    random values: one copy, ever."""
    with torch.device("meta"):
        module = build() if dtype is None else build().to(dtype)
    module.to_empty(device=device)
    return fill_random_(module, seed).eval().requires_grad_(False)


class RandomTokens:
    """Stands in for a T5 tokenizer: every prompt becomes `num_tokens` random ids ending with EOS (id 1), padded
    with 0 as asked (`padding="max_length"` pads to max_length, as the official T5 path does; "longest" not at
    all, as our T5 path runs)."""

    def __init__(self, num_tokens: int, vocab_size: int, seed: int = 0):
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens, self.vocab_size, self.seed = num_tokens, vocab_size, seed

    def __call__(self, prompts, max_length: int, padding: str, truncation: bool = True, return_tensors: str = "pt"):
        B, n = len(prompts), min(self.num_tokens, max_length)
        T = max_length if padding == "max_length" else n
        ids_BT = torch.zeros(B, T, dtype=torch.long)
        generator = torch.Generator().manual_seed(self.seed)
        ids_BT[:, : n - 1] = torch.randint(2, self.vocab_size, (B, n - 1), generator=generator)
        ids_BT[:, n - 1] = 1
        mask_BT = torch.zeros(B, T, dtype=torch.long)
        mask_BT[:, :n] = 1
        return {"input_ids": ids_BT, "attention_mask": mask_BT}


def random_t5_xl(device: torch.device, num_tokens: int = PROMPT_TOKENS, seed: int = 0) -> T5TextEncoder:
    """A Flan-T5-XL-sized encoder with random weights (fp16 on an accelerator, fp32 on the CPU, as the pipeline
    loads the real one), fed `num_tokens` random ids per prompt."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**FLAN_T5_XL_SIZES, is_encoder_decoder=False, use_cache=False)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    model = random_model(lambda: T5EncoderModel(config), device, dtype, seed)
    return T5TextEncoder(RandomTokens(num_tokens, config.vocab_size, seed), model)


def build(
    preset: str,
    device: torch.device,
    dtype: torch.dtype | str | None = None,
    budget: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS,
) -> BenchModel:
    """The pipeline of `preset` on `device`. dtype: of the transformer's blocks, or "int8" (fp32 with int8 Linear
    layers, CPU); default `precision.auto_dtype`. budget: pixel budget of the released models' schedules (default
    their own, 1M)."""
    if dtype == INT8 and preset not in OFFICIAL_MODELS:
        model = build(preset, device, torch.float32, budget, prompt_tokens)
        model.pipe.quantize_int8()
        model.notes.append("int8: the transformer blocks' Linear layers dynamically quantized (torch.ao)")
        return model
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if budget is not None and preset not in OFFICIAL_MODELS:
        raise ValueError(f"--budget applies to the released models ({', '.join(OFFICIAL_MODELS)}), not {preset}")
    if preset in OFFICIAL_MODELS:
        return _official(preset, device, dtype, budget or OFFICIAL_MODELS[preset].budget, prompt_tokens)
    dtype = dtype or auto_dtype(device, released=False)
    if preset == "embedded" and EMBEDDED_DIR.is_dir():
        pipe = InfinityPipeline.from_pretrained(None, device=device, dtype=dtype)
        return BenchModel(pipe, f"loaded from assets/{EMBEDDED_DIR.name}")
    recipe = RECIPES["shapes-small" if preset == "embedded" else preset]
    tokenizer = random_model(lambda: BitwiseTokenizer(recipe.tokenizer), device, torch.float32)
    transformer = random_model(lambda: Infinity(recipe.transformer), device, dtype)
    encoder = MiniLMTextEncoder.from_pretrained(device=device, max_length=recipe.transformer.text_maxlen)
    pipe = InfinityPipeline(tokenizer, transformer, encoder, recipe.schedules, SHAPES_DEFAULTS, preset, device, dtype)
    notes = [f"{EMBEDDED_DIR} is absent: random weights of RECIPES['shapes-small']"] if preset == "embedded" else []
    return BenchModel(pipe, "random", notes)


def random_int8_transformer(config, seed: int = 0) -> Infinity:
    """A random fp32 transformer whose blocks are made and quantized to int8 one at a time (CPU): never more
    than one fp32 block in memory, so an 8B model needs its int8 size (~9 GB), not its fp32 size (33 GB)."""
    with torch.device("meta"):
        model = Infinity(config)
    blocks, model.blocks = model.blocks, nn.ModuleList()
    fill_random_(model.to_empty(device="cpu"), seed)
    for i, block in enumerate(blocks):  # the same values as random_model(Infinity(config)), before quantizing
        quantize_int8_(fill_random_(block.to_empty(device="cpu"), seed, prefix=f"blocks.{i}."))
    model.blocks = blocks
    return model.eval().requires_grad_(False)


def _official(name: str, device: torch.device, dtype, budget: str, prompt_tokens: int) -> BenchModel:
    model = OFFICIAL_MODELS[name]
    dtype = dtype or auto_dtype(device, released=True)
    int8 = dtype == INT8
    dtype = torch.float32 if int8 else dtype
    try:
        loaded = InfinityPipeline.from_pretrained(name, device=device, dtype=dtype, local_files_only=True)
    except (WeightsNotFoundError, RuntimeError) as err:  # weights or Flan-T5 not on this machine
        logger.info("%s: %s", name, str(err).splitlines()[0])
    else:
        pipe = InfinityPipeline(
            loaded.tokenizer, loaded.transformer, loaded.text_encoder, official_schedules(budget), loaded.defaults,
            name, device, dtype, offload_text_encoder=loaded.offload_text_encoder,
        )
        return BenchModel(pipe.quantize_int8() if int8 else pipe, "loaded (official weights, Flan-T5-XL)")
    _check_memory(device, model, INT8 if int8 else dtype)
    tokenizer = random_model(lambda: BitwiseTokenizer(model.tokenizer), device, torch.float32)
    if int8:
        transformer = random_int8_transformer(model.transformer)
    else:
        transformer = random_model(lambda: cast_blocks_(Infinity(model.transformer), dtype), device, None)
    encoder = random_t5_xl(device, prompt_tokens)
    schedules = official_schedules(budget)
    pipe = InfinityPipeline(tokenizer, transformer, encoder, schedules, model.defaults, name, device, dtype)
    notes = [
        f"official weights not found: random weights of the {model.title} shapes",
        f"text encoder: a Flan-T5-XL-sized T5 encoder with random weights over {prompt_tokens} random tokens per "
        f"prompt (the prompt's length; the official code pads to {encoder.max_length})",
    ] + (["int8: the blocks' Linear layers dynamically quantized (torch.ao), built one block at a time"] if int8 else [])
    return BenchModel(pipe, "random", notes)


def parameter_bytes(*modules: nn.Module) -> int:
    """Bytes of the modules' weights, the int8 weights (and fp32 biases) of quantized Linear layers included."""
    quantized = [q for m in modules for q in m.modules() if isinstance(q, torch.ao.nn.quantized.dynamic.Linear)]
    packed = sum(q.weight().numel() + (0 if q.bias() is None else 4 * q.bias().numel()) for q in quantized)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) + packed


def _check_memory(device: torch.device, model, dtype: torch.dtype | str) -> None:
    """ValueError before allocating, when the weights alone exceed the RAM available (CPU runs only)."""
    available = _available_ram() if device.type == "cpu" else None
    if available is None:
        return
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**FLAN_T5_XL_SIZES, is_encoder_decoder=False))
        transformer = cast_blocks_(Infinity(model.transformer), torch.float32 if dtype == INT8 else dtype)
        needed = parameter_bytes(transformer, BitwiseTokenizer(model.tokenizer), t5)
        if dtype == INT8:  # 1 byte instead of 4 for the weights of the Linear layers quantize_int8_ takes
            linears = [m for m in transformer.blocks.modules() if isinstance(m, nn.Linear)]
            needed -= 3 * sum(m.weight.numel() for m in linears)
    if needed > available:
        raise ValueError(
            f"{model.title} in {str(dtype).removeprefix('torch.')} with a T5-XL encoder needs {needed / 2**30:.1f} GiB "
            f"for its weights alone; this machine has {available / 2**30:.1f} GiB available"
        )


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

