"""The Gradio callbacks. Each one validates what arrived (inputs.py), runs the pipeline or the explorer, and
builds what the components show (views.py). Every failure reaches the person as a gr.Error with a message:
bad input says what to change; anything unexpected is logged with its traceback and reported in one line,
and the server goes on serving.

The parameter names are the API's argument names (gradio_client: `client.predict("a cat", seed=3,
randomize_seed=False, api_name="/generate")`).
"""
from __future__ import annotations

import functools
import inspect
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
from gradio import processing_utils
from PIL import Image

from ..pipeline import InfinityPipeline
from ..sampling import Intervention
from ..tokenizer.model import unpatchify_bits
from . import explorer, inputs
from .views import (
    bits_image,
    difference_map,
    enlarge,
    entropy_overlay,
    per_scale_table,
    psnr_db,
    residual_image,
    tensor_to_pil,
    token_entropy,
)

logger = logging.getLogger(__name__)

AUTO = "auto"  # aspect-ratio choice for uploads: the model's ratio nearest the image's
MAX_CFG, MAX_TAU, MAX_TOP_K = 30.0, 5.0, 1_000_000
MAX_VARIATIONS = 8


def user_errors(fn: Callable) -> Callable:
    """Wrap a callback (function or generator) so that a ValueError becomes a gr.Error with its message and any
    other exception is logged and becomes a one-line gr.Error. Cancelling (GeneratorExit) passes through."""

    def translate(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, ValueError):
            return gr.Error(str(e), print_exception=False)
        if isinstance(e, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
            return gr.Error("The GPU ran out of memory; try again, or a smaller aspect ratio.", print_exception=False)
        logger.exception("%s failed", fn.__name__)
        return gr.Error(f"Something went wrong on the server ({type(e).__name__}); the details are in its log.",
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise translate(e) from None
        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise translate(e) from None
    return wrapper


@dataclass
class Generation:
    """A finished generation, kept per browser session (gr.State) for the tabs that explain it."""

    prompt: str
    negative_prompt: str
    aspect_ratio: str
    seed: int
    options: dict  # cfg, tau, top_k, top_p as used
    bits: list[torch.Tensor]  # (1, h, w, d) uint8 per scale, on the CPU: usable as prefix_bits
    entropy: list[np.ndarray]  # (h, w) mean bit entropy per token, per scale
    previews: list[Image.Image]  # per scale, at the image's size (explorer.scale_preview); the last is the image
    seconds: float

    @property
    def image(self) -> Image.Image:
        return self.previews[-1]


def cached(img: Image.Image, fmt: str = "webp") -> str:
    """Save an image once into Gradio's file cache and return its path. A streamed gallery resends its whole list
    at every update; paths already in the cache are not encoded again, PIL images would be."""
    return processing_utils.save_pil_to_cache(img, cache_dir=gr.utils.get_upload_folder(), format=fmt)


def new_seed() -> int:
    return random.SystemRandom().randint(0, inputs.MAX_UI_SEED)


def _grid(h: int, w: int) -> str:
    return f"{h}x{w}"


class Handlers:
    """The callbacks of one app, bound to one pipeline."""

    def __init__(self, pipe: InfinityPipeline):
        self.pipe = pipe

    # ---- shared checks ----

    def _sampling(self, cfg, tau, top_k, top_p) -> dict:
        return dict(
            cfg=inputs.number("CFG", cfg, 0.0, MAX_CFG),
            tau=inputs.number("tau", tau, 0.0, MAX_TAU, low_open=True),
            top_k=inputs.integer("top-k", top_k, 0, MAX_TOP_K),
            top_p=inputs.number("top-p", top_p, 0.0, 1.0),
        )

    def _aspect_ratio(self, value, image: Image.Image | None = None) -> str:
        if value == AUTO and image is not None:
            return explorer.nearest_aspect_ratio(self.pipe, image)
        return inputs.choice("aspect ratio", value, self.pipe.aspect_ratios + ([AUTO] if image is not None else []))

    def _seed(self, seed, randomize_seed) -> int:
        return new_seed() if inputs.flag("randomize seed", randomize_seed) else inputs.seed(seed)

    # ---- 1. generate ----

    @user_errors
    def generate(
        self, prompt, negative_prompt, aspect_ratio, cfg, seed, randomize_seed, tau, top_k, top_p
    ) -> Iterator[tuple]:
        """Streams one update per scale (the previews so far), then the final image.
        Each update: (previews, image or None, status, seed used, the Generation once finished)."""
        prompt = inputs.prompt_text(prompt)
        negative_prompt = inputs.prompt_text(negative_prompt, "negative prompt", required=False)
        aspect_ratio = self._aspect_ratio(aspect_ratio)
        options = self._sampling(cfg, tau, top_k, top_p)
        seed = self._seed(seed, randomize_seed)

        start = time.perf_counter()
        schedule = self.pipe.schedule(aspect_ratio)
        K = schedule.num_scales
        gallery, previews, bits, entropy = [], [], [], []
        for event in self.pipe.stream(prompt, negative_prompt, aspect_ratio, seed=seed, preview=False, **options):
            k, (h, w) = event.scale_index, schedule.scales[event.scale_index]
            preview = explorer.scale_preview(self.pipe, event)
            previews.append(preview)
            bits.append(event.bits_Bhwd.cpu())
            entropy.append(token_entropy(event.probs_Bhwd))
            gallery.append((cached(enlarge(preview)), f"scale {k + 1}/{K}: {_grid(h, w)}"))
            status = f"Scale {k + 1}/{K} ({_grid(h, w)} tokens) · {time.perf_counter() - start:.1f} s"
            yield list(gallery), None, status, seed, gr.skip()  # the session keeps its last finished Generation

        seconds = time.perf_counter() - start
        record = Generation(prompt, negative_prompt, aspect_ratio, seed, options, bits, entropy, previews, seconds)
        H, W = schedule.pixel_hw
        status = (f"Done: seed **{seed}** · {seconds:.2f} s · {K} scales · {W}x{H} px · "
                  f"{self.pipe.device_name}")
        yield list(gallery), record.image, status, seed, record

    def scale_range(self, record: Generation | None):
        """The scale slider's range for the current result (a UI update, not part of the API)."""
        K = len(record.bits) if record else max(s.num_scales for s in self.pipe.schedules.values())
        return gr.Slider(minimum=1, maximum=K, value=K, step=1)

    # ---- 2. inside each scale ----

    @user_errors
    def inspect_scale(self, scale, record: Generation | None):
        """(R_k's bits, what scale k added to the image, bit-entropy heatmap over the image, text) for scale k."""
        if record is None:
            raise ValueError("Generate an image first (Generate tab): this view explains the last result.")
        K = len(record.bits)
        k = inputs.integer("scale", scale, 1, K) - 1
        _, h, w, d = record.bits[k].shape
        image = record.image
        added, peak = residual_image(record.previews[k - 1] if k else None, record.previews[k])
        overlay = entropy_overlay(record.entropy[k], image)
        entropy = record.entropy[k]
        text = (
            f"**Scale {k + 1}/{K}**: {_grid(h, w)} tokens x {d} bits. The residual R_k is what this scale adds to "
            f"the running sum F (paper Algorithm 1); the largest change in the image is {peak:.0f}/255. Bit "
            f"entropy of the model's predictions (0 = sure, 1 = coin flip): mean {entropy.mean():.3f}, "
            f"max {entropy.max():.3f}."
        )
        return enlarge(bits_image(record.bits[k], image.size)), enlarge(added), enlarge(overlay), text

    # ---- 3. self-correction explorer ----

    @user_errors
    def self_correction_tokenizer(self, image, aspect_ratio, flip_scales, fraction, seed):
        """F_k of the clean encoding and of the same bits flipped without / with re-quantization, PSNR per scale."""
        img = inputs.read_image(image)
        aspect_ratio = self._aspect_ratio(aspect_ratio, img)
        K = self.pipe.schedule(aspect_ratio).num_scales
        flip_scales = inputs.integer("flipped scales", flip_scales, 1, K)
        fraction = inputs.number("flip fraction", fraction, 0.0, 1.0)
        result = explorer.tokenizer_self_correction(
            self.pipe, img, aspect_ratio, flip_scales, fraction, inputs.seed(seed)
        )
        galleries = [
            [(cached(enlarge(im)), f"scale {k + 1}: {p:.1f} dB") for k, (im, p) in enumerate(zip(r.images, r.psnr))]
            for r in result.series.values()
        ]
        table = per_scale_table({name: r.psnr for name, r in result.series.items()}, "PSNR (dB)")
        final = {name: r.psnr[-1] for name, r in result.series.items()}
        text = (
            f"Flipped {sum(result.flipped):,} bits ({fraction:.0%}) in scales 1-{flip_scales} of {K}. Final PSNR: "
            + ", ".join(f"{name} {p:.2f} dB" for name, p in final.items())
            + ". Re-quantization lets the later scales correct the flips (Algorithm 4)."
        )
        return *galleries, table, text

    @user_errors
    def self_correction_generation(self, prompt, aspect_ratio, seed, scale, fraction):
        """The clean run and the run with `fraction` of scale k's bits flipped, their difference, and how many bits
        of every scale changed."""
        prompt = inputs.prompt_text(prompt)
        aspect_ratio = self._aspect_ratio(aspect_ratio)
        K = self.pipe.schedule(aspect_ratio).num_scales
        k = inputs.integer("scale", scale, 1, K) - 1
        fraction = inputs.number("flip fraction", fraction, 0.0, 1.0)
        seed = inputs.seed(seed)
        result = explorer.generation_intervention(
            self.pipe, prompt, seed, Intervention(k, fraction, seed), aspect_ratio=aspect_ratio
        )
        clean, flipped = result.clean[-1], result.flipped[-1]
        diff, mean_abs = difference_map(clean, flipped)
        table = per_scale_table({"bits changed": [100 * c for c in result.bits_changed]}, "bits changed (%)")
        later = result.bits_changed[k + 1:]
        text = (
            f"Flipped {result.flipped_bits:,} bits ({fraction:.0%}) of scale {k + 1}/{K}, seed {seed}. "
            f"Later scales changed {100 * float(np.mean(later)) if later else 0:.1f}% of their bits on average; "
            f"final images: PSNR {psnr_db(clean, flipped):.2f} dB, mean |difference| {mean_abs:.1f}/255."
        )
        return enlarge(clean), enlarge(flipped), enlarge(diff), table, text

    # ---- 4. tokenizer ----

    @user_errors
    def tokenize(self, image, aspect_ratio):
        """The image's reconstruction after every scale, with PSNR."""
        img = inputs.read_image(image)
        aspect_ratio = self._aspect_ratio(aspect_ratio, img)
        schedule = self.pipe.schedule(aspect_ratio)
        fitted, rec = explorer.reconstruct(self.pipe, img, aspect_ratio)
        gallery = [(cached(enlarge(fitted)), "input (resized and cropped)")] + [
            (cached(enlarge(im)), f"scale {k + 1}: {_grid(*schedule.scales[k])}, {p:.2f} dB")
            for k, (im, p) in enumerate(zip(rec.images, rec.psnr))
        ]
        H, W = schedule.pixel_hw
        text = (
            f"Aspect ratio {aspect_ratio} ({W}x{H} px), {schedule.num_scales} scales: PSNR {rec.psnr[0]:.2f} dB "
            f"after the first, {rec.psnr[-1]:.2f} dB after the last."
        )
        return gallery, per_scale_table({"reconstruction": rec.psnr}, "PSNR (dB)"), text

    # ---- 5. variations ----

    @user_errors
    def variations(self, source, image, aspect_ratio, keep_scales, count, prompt, seed, randomize_seed, record):
        """Keep the first k scales of the last result (or of an uploaded image) and resample the rest, streaming
        one image per seed. Each update: (gallery, status)."""
        source = inputs.choice("source", source, ["last result", "uploaded image"])
        prompt = inputs.prompt_text(prompt, required=source == "uploaded image")
        if source == "last result":
            if record is None:
                raise ValueError("Generate an image first, or choose 'uploaded image' as the source.")
            aspect_ratio, bits = record.aspect_ratio, record.bits
            options = {**record.options, "negative_prompt": record.negative_prompt}
            prompt = prompt.strip() or record.prompt
        else:
            img = inputs.read_image(image)
            aspect_ratio = self._aspect_ratio(aspect_ratio, img)
            bits, options = self.pipe.encode_image(img, aspect_ratio), {}
        K = len(bits)
        keep = inputs.integer("kept scales", keep_scales, 1, K - 1) if K > 1 else 0
        count = inputs.integer("number of variations", count, 1, MAX_VARIATIONS)
        first = self._seed(seed, randomize_seed)
        seeds = [(first + i) % (inputs.MAX_UI_SEED + 1) for i in range(count)]

        start = time.perf_counter()
        gallery = [(cached(enlarge(self._prefix_image(bits[:keep], aspect_ratio))), f"kept: scales 1-{keep}")]
        yield list(gallery), f"Kept {keep}/{K} scales; sampling {count} variations..."
        images = explorer.variations(self.pipe, bits[:keep], prompt, seeds, aspect_ratio=aspect_ratio, **options)
        for i, (s, img) in enumerate(zip(seeds, images)):
            gallery.append((cached(enlarge(img)), f"seed {s}"))
            yield list(gallery), f"{i + 1}/{count} variations · {time.perf_counter() - start:.1f} s"
        yield list(gallery), (f"Done: {count} variations of scales {keep + 1}-{K} with seeds {seeds[0]}-{seeds[-1]}, "
                              f"prompt '{prompt[:80]}' · {time.perf_counter() - start:.2f} s")

    @torch.no_grad()
    def _prefix_image(self, bits: list[torch.Tensor], aspect_ratio: str) -> Image.Image:
        """The image of the kept scales alone: F_k decoded from their bits."""
        s, tok = self.pipe.spatial_patch, self.pipe.tokenizer
        H, W = self.pipe.schedule(aspect_ratio).latent_hw
        latent = [unpatchify_bits(b, s).to(self.pipe.device) for b in bits]
        return tensor_to_pil(tok.decode_bits(latent, (s * H, s * W))[0])
