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

from ..eval import pair as pair_measure
from ..images import fit, psnr, to_pil, to_tensor
from ..pipeline import InfinityPipeline
from ..sampling import Intervention
from ..tokenizer.model import unpatchify_bits
from . import explorer, inputs, pair, vocabulary
from .sheets import contact_sheet
from .tokenizers import BEST, MODEL_OWN, Codec, TokenizerShelf
from .views import (
    bits_image,
    difference_map,
    enlarge,
    entropy_overlay,
    per_scale_table,
    residual_image,
    series_colors,
    spread,
    token_entropy,
)

logger = logging.getLogger(__name__)

AUTO = "auto"  # aspect-ratio choice for uploads: the model's ratio nearest the image's
ALL_TOKENIZERS = "all, side by side"  # the Tokenizer tab's choice that runs every tokenizer on the same image
MAX_CFG, MAX_TAU, MAX_TOP_K = 30.0, 5.0, 1_000_000
MAX_VARIATIONS = 8
MAX_PAIR_SCENES = 64  # held-out scenes one "trained with vs without" comparison may average over


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
    return random.SystemRandom().randint(0, inputs.MAX_SEED)


def _grid(h: int, w: int) -> str:
    return f"{h}x{w}"


def grid_labels(scales) -> list[str]:
    """The label of every tile of a contact sheet of one schedule: "scale k: hxw"."""
    return [f"scale {k + 1}: {_grid(h, w)}" for k, (h, w) in enumerate(scales)]


class Handlers:
    """The callbacks of one app, bound to one pipeline."""

    def __init__(self, pipe: InfinityPipeline, tokenizers: TokenizerShelf | None = None,
                 pair_slot: pair.PairSlot | None = None):
        self.pipe = pipe
        self.tokenizers = tokenizers or TokenizerShelf(pipe)
        self.pair = pair_slot or pair.PairSlot()
        self.shapes_model = vocabulary.is_shapes_model(pipe)

    def notice(self, prompt: str) -> str:
        """The unknown-words notice for a prompt ("" for a model that is not a shapes model)."""
        return vocabulary.notice(prompt) if self.shapes_model else ""

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

    def _upload_aspect_ratio(self, value) -> str:
        return inputs.choice("aspect ratio", value, [AUTO, *self.pipe.aspect_ratios])

    def _codec(self, tokenizer, image: Image.Image, aspect_value: str) -> tuple[Codec, str]:
        """The chosen tokenizer, and for BEST the sentence that says how it was chosen (else "")."""
        shelf = self.tokenizers
        if inputs.choice("tokenizer", tokenizer, shelf.options) != BEST:
            return shelf.get(tokenizer), ""
        codec, scores = explorer.best_codec([shelf.get(t) for t in shelf.choices], image, aspect_value)
        ranked = ", ".join(f"{label} {db:.1f} dB" for label, db in sorted(scores.items(), key=lambda t: -t[1]))
        return codec, f"Chosen: {codec.label}, the best reconstruction of this image (final PSNR: {ranked})."

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
        K, labels = schedule.num_scales, grid_labels(schedule.scales)
        notice = self.notice(prompt)
        notice = f"\n\n{notice}" if notice else ""
        previews, bits, entropy = [], [], []
        for event in self.pipe.stream(prompt, negative_prompt, aspect_ratio, seed=seed, preview=False, **options):
            k, (h, w) = event.scale_index, schedule.scales[event.scale_index]
            previews.append(explorer.scale_preview(self.pipe, event))
            bits.append(event.bits_Bhwd.cpu())
            entropy.append(token_entropy(event.probs_Bhwd))
            sheet = cached(contact_sheet([previews], [labels], schedule.pixel_hw))
            status = f"Scale {k + 1}/{K} ({_grid(h, w)} tokens) · {time.perf_counter() - start:.1f} s{notice}"
            yield sheet, None, status, seed, gr.skip()  # the session keeps its last finished Generation

        seconds = time.perf_counter() - start
        record = Generation(prompt, negative_prompt, aspect_ratio, seed, options, bits, entropy, previews, seconds)
        H, W = schedule.pixel_hw
        status = (f"Done: seed **{seed}** · {seconds:.2f} s · {K} scales · {W}x{H} px · "
                  f"{self.pipe.device_name}{notice}")
        yield sheet, record.image, status, seed, record

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
    def self_correction_tokenizer(self, image, aspect_ratio, flip_scales, fraction, seed, tokenizer):
        """F_k of the clean encoding and of the same bits flipped without / with re-quantization, as one sheet; the
        feature error per scale; a table of the final measures and the conclusion they support."""
        img = inputs.read_image(image)
        aspect_value = self._upload_aspect_ratio(aspect_ratio)
        codec, chosen = self._codec(tokenizer, img, aspect_value)
        aspect_ratio = codec.aspect_ratio(aspect_value, img)
        schedule = codec.schedules[aspect_ratio]
        K = schedule.num_scales
        flip_scales = inputs.integer("flipped scales", flip_scales, 1, K)
        fraction = inputs.number("flip fraction", fraction, 0.0, 1.0)
        result = explorer.tokenizer_self_correction(codec, img, aspect_ratio, flip_scales, fraction, inputs.seed(seed))
        sheet = contact_sheet(
            [r.images for r in result.series.values()],
            [[f"{label} · {p:.1f} dB" for label, p in zip(grid_labels(schedule.scales), r.psnr_input)]
             for r in result.series.values()],
            schedule.pixel_hw, titles=[name.replace(", ", ",\n") for name in result.series],
        )
        table = per_scale_table({name: r.feature_error for name, r in result.series.items()}, "|f - F_k| / |f|")
        rows = "\n".join(
            f"| {name} | {r.psnr_input[-1]:.2f} dB | {'-' if name == explorer.CLEAN else f'{r.psnr_clean[-1]:.2f} dB'}"
            f" | {r.feature_error[-1]:.3f} |"
            for name, r in result.series.items()
        )
        text = (
            f"Tokenizer: {codec.label}. {chosen + ' ' if chosen else ''}Flipped {sum(result.flipped):,} bits "
            f"({fraction:.0%}) in scales 1-{flip_scales} of {K}; the tiles are labelled with their PSNR against the "
            "input.\n\n"
            "| after the last scale | PSNR vs input | PSNR vs clean encoding | feature error ‖f - F_K‖ / ‖f‖ |\n"
            f"|---|---|---|---|\n{rows}\n\n{explorer.verdict(result).text}"
        )
        return sheet, table, text

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
        psnr_db = float(psnr(to_tensor(clean), to_tensor(flipped))[0])
        text = (
            f"Flipped {result.flipped_bits:,} bits ({fraction:.0%}) of scale {k + 1}/{K}, seed {seed}. "
            f"Later scales changed {100 * float(np.mean(later)) if later else 0:.1f}% of their bits on average; "
            f"final images: PSNR {psnr_db:.2f} dB, mean |difference| {mean_abs:.1f}/255."
        )
        return enlarge(clean), enlarge(flipped), enlarge(diff), table, text

    @user_errors
    def self_correction_pair(self, scene, scale, fraction, seed, scenes_measured):
        """The matched pair (trained with / without self-correction) given the same flipped bits: one held-out
        scene's images as a sheet, and the recovery of both averaged over the first `scenes_measured` held-out
        scenes, with the conclusion those means support."""
        duo = self.pair.get()
        index = inputs.integer("scene", scene, 1, len(duo.scenes)) - 1
        k = inputs.integer("scale", scale, 1, duo.num_scales - 1)
        fraction = inputs.number("flip fraction", fraction, 0.0, 1.0)
        seed = inputs.seed(seed)
        count = inputs.integer("scenes measured", scenes_measured, 1, min(MAX_PAIR_SCENES, len(duo.scenes)))
        one = pair_measure.compare_scene(duo, index, k, fraction, seed)
        clean, no_correction = pair_measure.CLEAN, pair_measure.NO_CORRECTION
        names = ["scene", clean, no_correction, *pair_measure.ARMS]
        short = {"scene": "the scene", clean: "clean recon.", no_correction: "true later bits",
                 "without": "trained without", "with": "trained with"}
        long = {**short, **{arm: pair.arm_label(duo.info, arm) for arm in pair_measure.ARMS}}
        labels = [short[n] if n not in one.psnr_db else f"{short[n]} · {one.psnr_db[n]:.1f} dB" for n in names]
        hw = duo.pipes["with"].schedule(pair_measure.ASPECT_RATIO).pixel_hw
        sheet = contact_sheet([[one.images[n] for n in names]], [labels], hw)
        rows = "\n".join(f"| {long[n]} | {one.psnr_db[n]:.2f} dB | "
                         f"{'yes' if one.parsed[n] else 'no'} |" for n in names[2:])
        measured = pair_measure.measure(duo, k, fraction, count, seed)
        text = (f"Scene {index + 1}: '{one.caption}', {fraction:.0%} of scale {k}'s bits flipped, seed {seed}.\n\n"
                "| this scene | PSNR vs its clean reconstruction | the scene parser reads the scene |\n"
                f"|---|---|---|\n{rows}\n\n{pair.comparison_text(duo, measured)}")
        return sheet, text

    # ---- 4. tokenizer ----

    @user_errors
    def tokenize(self, image, aspect_ratio, tokenizer):
        """The image's reconstruction after every scale, with PSNR: with one tokenizer, or with every one on the
        same image (one row each)."""
        img = inputs.read_image(image)
        labels = inputs.choice("tokenizer", tokenizer, [*self.tokenizers.options, ALL_TOKENIZERS])
        aspect = self._upload_aspect_ratio(aspect_ratio)
        if labels == ALL_TOKENIZERS:
            codecs, chosen = [self.tokenizers.get(t) for t in self.tokenizers.choices], ""
        else:
            codec, chosen = self._codec(labels, img, aspect)
            codecs = [codec]
        rows, tile_labels, titles, series, lines = [], [], [], {}, []
        for codec in codecs:
            name = codec.aspect_ratio(aspect, img)
            schedule = codec.schedules[name]
            fitted, rec = explorer.reconstruct(codec, img, name)
            bits = codec.tokenizer.bits
            rows.append([fitted, *rec.images])
            tile_labels.append(["input · resized, cropped"] + [
                f"{label} · {p:.1f} dB" for label, p in zip(grid_labels(schedule.scales), rec.psnr)])
            titles.append(f"{codec.label}\n{bits} bits per token")
            series[f"{codec.label}"] = rec.psnr
            H, W = schedule.pixel_hw
            lines.append(f"{codec.label} ({bits} bits per token): aspect ratio {name} ({W}x{H} px), "
                         f"{schedule.num_scales} scales, PSNR {rec.psnr[0]:.2f} dB after the first, "
                         f"{rec.psnr[-1]:.2f} dB after the last.")
        sheet = contact_sheet(rows, tile_labels, codecs[0].schedules[codecs[0].aspect_ratio(aspect, img)].pixel_hw,
                              titles=titles if len(codecs) > 1 else None)
        return sheet, per_scale_table(series, "PSNR (dB)"), "\n\n".join(([chosen] if chosen else []) + lines)

    def plot_colors(self, plot):
        """The Tokenizer plot's colour map: a colour for each tokenizer it shows, the same in every run (a UI update
        sent after the plot's data, see app.py; not part of the API). `plot`: the plot's value as the page has it."""
        if not plot:
            return gr.skip()
        column, order = plot["columns"].index("series"), self.tokenizers.choices
        shown = {row[column] for row in plot["data"]}
        return gr.LinePlot(color_map=series_colors([name for name in order if name in shown], order))

    # ---- 5. variations ----

    @user_errors
    def variations(self, source, image, aspect_ratio, keep_scales, count, prompt, seed, randomize_seed, record):
        """Keep the first k scales of the last result (or of an uploaded image) and resample the rest, streaming
        one image per seed. An empty prompt means the last generated prompt, for either source. Each update:
        (contact sheet of the kept scales and the variations, status)."""
        source = inputs.choice("source", source, ["last result", "uploaded image"])
        prompt = inputs.prompt_text(prompt, required=False).strip()
        if source == "last result" and record is None:
            raise ValueError("Generate an image first, or choose 'uploaded image' as the source.")
        if not prompt:
            if record is None:
                raise ValueError("Enter a prompt: it is empty, and there is no generated image to take one from.")
            prompt = record.prompt
        if source == "last result":
            aspect_ratio, bits = record.aspect_ratio, record.bits
            options = {**record.options, "negative_prompt": record.negative_prompt}
        else:
            img = inputs.read_image(image)
            aspect_ratio = self._aspect_ratio(aspect_ratio, img)
            bits, options = self.pipe.encode_image(img, aspect_ratio), {}
        K = len(bits)
        keep = inputs.integer("kept scales", keep_scales, 1, K - 1) if K > 1 else 0
        count = inputs.integer("number of variations", count, 1, MAX_VARIATIONS)
        first = self._seed(seed, randomize_seed)
        seeds = [(first + i) % (inputs.MAX_SEED + 1) for i in range(count)]

        start = time.perf_counter()
        hw = self.pipe.schedule(aspect_ratio).pixel_hw
        tiles = [self._prefix_image(bits[:keep], aspect_ratio)]
        kept = f"kept: scales 1-{keep}"
        if source == "uploaded image":  # how much of the upload the kept scales carry
            kept += f" · {float(psnr(to_tensor(tiles[0]), to_tensor(fit(img.convert('RGB'), hw)))):.1f} dB"
        labels = [[kept, *(f"seed {s}" for s in seeds)]]
        notice = self.notice(prompt)
        notice = f"\n\n{notice}" if notice else ""
        yield cached(contact_sheet([tiles], labels, hw)), f"Kept {keep}/{K} scales; sampling {count} variations...{notice}"
        images = explorer.variations(self.pipe, bits[:keep], prompt, seeds, aspect_ratio=aspect_ratio, **options)
        for i, img in enumerate(images):
            tiles.append(img)
            sheet = cached(contact_sheet([tiles], labels, hw))
            yield sheet, f"{i + 1}/{count} variations · {time.perf_counter() - start:.1f} s{notice}"
        yield sheet, (f"Done: {count} variation{'s' if count > 1 else ''} of scales {keep + 1}-{K} with seeds "
                      f"{seeds[0]}-{seeds[-1]}, prompt '{prompt[:80]}' · {time.perf_counter() - start:.2f} s"
                      f"{spread(tiles[1:])}{notice}")

    @user_errors
    def upload_layout(self, image, aspect_ratio):
        """For a newly uploaded image: the Variations source set to it, and the kept scales to the fewest that
        hold its layout (explorer.layout_scales), measured on its encoding by the model's tokenizer."""
        img = inputs.read_image(image)
        codec = self.tokenizers.get(MODEL_OWN)
        _, rec = explorer.reconstruct(codec, img, codec.aspect_ratio(self._aspect_ratio(aspect_ratio, img), img))
        return "uploaded image", gr.Slider(value=explorer.layout_scales(rec.psnr))

    @torch.no_grad()
    def _prefix_image(self, bits: list[torch.Tensor], aspect_ratio: str) -> Image.Image:
        """The image of the kept scales alone: F_k decoded from their bits."""
        s, tok = self.pipe.spatial_patch, self.pipe.tokenizer
        H, W = self.pipe.schedule(aspect_ratio).latent_hw
        latent = [unpatchify_bits(b, s).to(self.pipe.device) for b in bits]
        return to_pil(tok.decode_bits(latent, (s * H, s * W))[0])
