"""Infinity's interactive app: generate with live per-scale previews, look inside each scale, explore bitwise
self-correction, tokenize an image, make variations from scale k.

    python app.py                            # the embedded model, on http://127.0.0.1:7860
    python app.py --model infinity-125m      # a released model (or INFINITY_MODEL=infinity-125m); or a model folder

This file only lays out the UI and wires it to a pipeline (`build_demo(pipe)`, so tests can build it with any
pipeline); the callbacks are in infinity/app/handlers.py. Heavy modules (torch, gradio) are imported inside
`main` and `build_demo`, so `--help` is instant and the server starts as soon as the model is loaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
# A shapes scene (every tokenizer here reconstructs it well, so the explorers show their effect) and a drawing.
# a shapes scene, a drawing, and a held-out photograph (scikit-image's coffee cup, BSD-3-Clause; never trained on)
EXAMPLE_IMAGES = [str(EXAMPLES_DIR / n) for n in ("scene.png", "shapes.png", "coffee.png")]
# Small outputs (our tiny models make 32 px images) are drawn with square pixels rather than blurred.
CSS = """
#status { min-height: 2.5em; }
.pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.compact .fixed-height { min-height: 0; }
"""


def launch_options() -> dict:
    """What main() passes to launch(); tests launch with it too. The theme is Gradio's default but for its bold
    text: Gradio ships Source Sans Pro's semibold (600) as a subset without digits, so bold numbers fell back to
    another typeface ("dB" came out half bold); the full bold (700) file has every glyph."""
    import gradio as gr

    font = [gr.themes.LocalFont("Source Sans Pro", weights=(400, 700)), "ui-sans-serif", "system-ui", "sans-serif"]
    return dict(max_file_size="25mb", css=CSS, theme=gr.themes.Default(font=font))


def build_demo(pipe, model: str | None = None, max_queue: int = 32, concurrency: int = 1,
               tokenizers_dir: str | os.PathLike | None = None, pair_dir: str | os.PathLike | None = None):
    """The Gradio app for `pipe`, queued: at most `max_queue` waiting requests, `concurrency` model calls at once
    (they share one concurrency group, the device). `model` is only named in the banner. `tokenizers_dir`: the
    folder of general tokenizer files offered for uploads (default: $INFINITY_TOKENIZERS_DIR, else
    assets/tokenizers). `pair_dir`: the self-correction pair (default: assets/self-correction)."""
    import gradio as gr

    from infinity.app.handlers import ALL_TOKENIZERS, AUTO, MAX_PAIR_SCENES, MAX_VARIATIONS, Handlers
    from infinity.app.pair import PAIR_DIR, PairSlot, pair_intro
    from infinity.app.runtime import banner, gpu, measured
    from infinity.app.tokenizers import TokenizerShelf
    from infinity.app.vocabulary import can_draw
    from infinity.app.views import DIFFERENCE_FULL_SCALE, scale_labels
    from infinity.options import MAX_SEED

    shelf = TokenizerShelf(pipe, tokenizers_dir)
    slot = PairSlot(pair_dir or PAIR_DIR)
    h = Handlers(pipe, shelf, slot)
    pair_info = slot.info()  # None: no pair in this checkout (the tab says so)
    ratios, d = pipe.aspect_ratios, pipe.defaults
    K = max(s.num_scales for s in pipe.schedules.values())
    small = max(max(s.pixel_hw) for s in pipe.schedules.values()) < 512
    pixelated = ["pixelated"] if small else None  # CSS class: square pixels for small images
    # Every event that runs the model joins one concurrency group: the device runs `concurrency` at a time.
    # preprocess=False: the handlers validate the raw values themselves (clear messages, see inputs.py).
    per_scale = dict(x="scale", color="series", sort=scale_labels(K))  # line plots over the scales
    on_device = dict(concurrency_id="device", concurrency_limit=concurrency, preprocess=False)
    upload = dict(type="filepath", sources=["upload", "clipboard"], image_mode=None)

    def sheet(title: str, elem_id: str):
        """A contact sheet (infinity/app/sheets.py): its title above it, no overlay on its labelled tiles. Not
        pixelated: its tiles are enlarged with square pixels already, and a sheet scaled down with nearest
        neighbour loses rows and columns of its labels' letters."""
        gr.Markdown(f"**{title}**")
        return gr.Image(show_label=False, buttons=[], format="png", interactive=False, elem_id=elem_id)

    with gr.Blocks(title="Infinity", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("## Infinity: bitwise visual autoregressive text-to-image ([arXiv 2412.04431]"
                    "(https://arxiv.org/abs/2412.04431))")
        about = [can_draw(), measured(model)] if h.shapes_model else []
        gr.Markdown("  \n".join([banner(pipe, model), *filter(None, about)]), elem_id="banner")
        last = gr.State(None, time_to_live=1800)  # this session's last Generation (freed after 30 min)

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                        placeholder=pipe.examples[0] if pipe.examples else "a red cube on a table")
                    negative = gr.Textbox("", label="Negative prompt", placeholder="optional")
                    with gr.Row():
                        aspect = gr.Dropdown(ratios, value=ratios[0], label="Aspect ratio", elem_id="aspect")
                        cfg = gr.Slider(0, 20, value=d.cfg, step=0.5, label="CFG", info="1 = no guidance")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                        randomize = gr.Checkbox(True, label="Randomize seed", elem_id="randomize")
                    with gr.Accordion("Advanced", open=False):
                        tau = gr.Slider(0.05, 2.0, value=d.tau, step=0.05, label="tau (temperature)")
                        top_k = gr.Number(d.top_k, precision=0, minimum=0, label="top-k per bit",
                                          info="0 = off; a bit has 2 values, so 1 = greedy and >= 2 keeps both")
                        top_p = gr.Slider(0, 1, value=d.top_p, step=0.01, label="top-p per bit", info="0 = off")
                    with gr.Row():
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    status = gr.Markdown(elem_id="status")  # no label: "status" is a key of Gradio's i18n
                    if pipe.examples:
                        gr.Examples([[p] for p in pipe.examples], inputs=[prompt], label="Examples")
                with gr.Column(scale=3):
                    image = gr.Image(label="Image", format="png", interactive=False, height=400, elem_id="image",
                                     elem_classes=pixelated)
            previews = sheet("Previews: the image after each scale, every scale in its place from the start",
                             "previews")

        with gr.Tab("Inside each scale", id="inside"):
            gr.Markdown("For one scale of the last generated image: its residual R_k (each token's bits in three "
                        "groups, the mean of each group as red, green, blue), what it changed in the image (grey = "
                        "nothing, brighter = added, darker = removed), and how unsure the model was about each "
                        "token's bits (mean bit entropy, dark = sure, bright = coin flip) over the final image.")
            scale = gr.Slider(1, K, value=K, step=1, label="Scale")
            with gr.Row():
                bits_view = gr.Image(label="R_k: the bits of this scale", format="png", interactive=False)
                added_view = gr.Image(label="What scale k added", format="png", interactive=False)
                entropy_view = gr.Image(label="Bit entropy over the image", format="png", interactive=False)
            inside_text = gr.Markdown("Generate an image first (Generate tab): this tab then shows its scales, one "
                                      "at a time.", elem_id="inside-text")

        with gr.Tab("Self-correction", id="self-correction"):
            with gr.Tab("Tokenizer level"):
                gr.Markdown("Flip a fraction of the bits of the first scales of an image's encoding, twice: "
                            "without re-quantization (the later scales keep the clean encoding's bits) and with it "
                            "(paper Algorithm 4: the later scales quantize the residual of the corrupted sum). "
                            "The numbers under the result say whether re-quantization brought the image back.")
                with gr.Row():
                    with gr.Column():
                        sc_image = gr.Image(value=EXAMPLE_IMAGES[0], label="Image", **upload)
                        gr.Examples([[im] for im in EXAMPLE_IMAGES], inputs=[sc_image], label="Example images")
                    with gr.Column():
                        sc_tokenizer = gr.Dropdown(shelf.options, value=shelf.default, label="Tokenizer",
                                                   elem_id="sc-tokenizer-choice")
                        sc_aspect = gr.Dropdown([AUTO, *ratios], value=AUTO, label="Aspect ratio")
                        sc_scales = gr.Slider(1, K, value=min(2, K), step=1, label="Flip bits in scales 1..n")
                        sc_fraction = gr.Slider(0, 1, value=0.3, step=0.01, label="Fraction of bits flipped")
                        sc_seed = gr.Number(0, label="Seed of the flips", precision=0, minimum=0)
                        sc_run = gr.Button("Compare", variant="primary", elem_id="sc-tokenizer")
                sc_text = gr.Markdown(elem_id="sc-text")
                sc_sheet = sheet("F_k after each scale: clean, flipped, flipped and re-quantized", "sc-sheet")
                sc_plot = gr.LinePlot(y="|f - F_k| / |f|", label="Feature error per scale (0 = the encoder's features)",
                                      **per_scale)
            with gr.Tab("Generation level"):
                gr.Markdown("Generate twice with the same prompt and seed; in the second run flip a fraction of "
                            "the sampled bits at one scale and watch how the later scales react.")
                with gr.Row():
                    with gr.Column():
                        gi_prompt = gr.Textbox(label="Prompt", value=pipe.examples[0] if pipe.examples else "")
                        gi_aspect = gr.Dropdown(ratios, value=ratios[0], label="Aspect ratio", elem_id="aspect")
                        gi_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    with gr.Column():
                        gi_scale = gr.Slider(1, K, value=min(2, K), step=1, label="Flip bits at scale")
                        gi_fraction = gr.Slider(0, 1, value=0.3, step=0.01, label="Fraction of bits flipped")
                        gi_run = gr.Button("Compare", variant="primary", elem_id="sc-generation")
                with gr.Row():
                    gi_clean = gr.Image(label="Clean run", format="png", interactive=False)
                    gi_flipped = gr.Image(label="With flipped bits", format="png", interactive=False)
                    gi_diff = gr.Image(label=f"|difference|: black = equal, brightest = {DIFFERENCE_FULL_SCALE:.0f}/255 "
                                             "or more", format="png", interactive=False)
                gi_plot = gr.LinePlot(y="bits changed (%)", label="Bits that differ from the clean run, per scale",
                                      **per_scale)
                gi_text = gr.Markdown()
            with gr.Tab("Trained with vs without"):
                gr.Markdown(pair_intro(pair_info))
                # Without a pair the controls stay (a slider needs two values) and the button is disabled.
                scenes = max(2, sum(pair_info["heldout"].values())) if pair_info else 2
                pair_K = max(3, len(pair_info["schedule"])) if pair_info else 3
                with gr.Row():
                    with gr.Column():
                        pa_scene = gr.Slider(1, scenes, value=pair_info.get("default_scene", 1) if pair_info else 1,
                                             step=1, label="Held-out scene")
                        pa_scale = gr.Slider(1, pair_K - 1, value=min(2, pair_K - 1), step=1,
                                             label="Flip bits at scale k (the true bits of scales 1..k are given)")
                        pa_fraction = gr.Slider(0, 1, value=0.2, step=0.01, label="Fraction of scale k flipped")
                    with gr.Column():
                        pa_seed = gr.Number(0, label="Seed (flipped positions and sampling)", precision=0, minimum=0,
                                            maximum=MAX_SEED)
                        pa_count = gr.Slider(1, min(scenes, MAX_PAIR_SCENES), value=min(16, scenes), step=1,
                                             label="Scenes the means are taken over")
                        pa_run = gr.Button("Compare", variant="primary", elem_id="sc-pair",
                                           interactive=pair_info is not None)
                pa_sheet = sheet("The same flipped bits given to both models", "pa-sheet")
                pa_text = gr.Markdown(elem_id="pa-text")

        with gr.Tab("Tokenizer", id="tokenizer"):
            gr.Markdown("An image encoded into a tokenizer's scales and decoded after each one: the model's own "
                        "tokenizer or a general one, with the PSNR after every scale ("
                        f"'{ALL_TOKENIZERS}' runs every one on the same image, to compare bit depths).")
            with gr.Row():
                with gr.Column():
                    tk_image = gr.Image(value=EXAMPLE_IMAGES[0], label="Image", elem_id="tk-image", **upload)
                    gr.Examples([[im] for im in EXAMPLE_IMAGES], inputs=[tk_image], label="Example images")
                with gr.Column():
                    tk_tokenizer = gr.Dropdown([*shelf.options, ALL_TOKENIZERS], value=shelf.default,
                                               label="Tokenizer", elem_id="tk-tokenizer-choice")
                    tk_aspect = gr.Dropdown([AUTO, *ratios], value=AUTO, label="Aspect ratio")
                    tk_run = gr.Button("Tokenize", variant="primary", elem_id="tokenize")
                    tk_text = gr.Markdown(elem_id="tk-text")
            tk_sheet = sheet("Reconstruction after each scale", "tk-sheet")
            tk_plot = gr.LinePlot(y="PSNR (dB)", label="PSNR per scale", elem_id="tk-plot", **per_scale)

        with gr.Tab("Variations", id="variations"):
            gr.Markdown("Keep the first k scales (the layout) of the last result or of an uploaded image and "
                        "sample the rest again, with new seeds or a new prompt.")
            with gr.Row():
                with gr.Column():
                    va_source = gr.Radio(["last result", "uploaded image"], value="last result", label="Source")
                    va_image = gr.Image(label="Uploaded image", elem_id="va-image", **upload)
                    va_aspect = gr.Dropdown([AUTO, *ratios], value=AUTO, label="Aspect ratio (uploads)")
                with gr.Column():
                    va_keep = gr.Slider(1, max(K - 1, 1), value=max(1, K // 2), step=1, label="Keep scales 1..k")
                    va_count = gr.Slider(1, MAX_VARIATIONS, value=4, step=1, label="Variations")
                    va_prompt = gr.Textbox("", label="Prompt", placeholder="empty: the last generated prompt",
                                           elem_id="va-prompt")
                    with gr.Row():
                        va_seed = gr.Number(0, label="First seed", precision=0, minimum=0, maximum=MAX_SEED)
                        va_randomize = gr.Checkbox(True, label="Randomize seed", elem_id="randomize")
                    with gr.Row():
                        va_run = gr.Button("Make variations", variant="primary", elem_id="variations")
                        va_stop = gr.Button("Stop", variant="stop")
            va_status = gr.Markdown(elem_id="va-status")
            va_sheet = sheet("Variations (the first tile: the kept scales alone)", "va-sheet")

        # ---- events ----
        generating = gr.on(
            [run.click, prompt.submit], gpu(h.generate),
            inputs=[prompt, negative, aspect, cfg, seed, randomize, tau, top_k, top_p],
            outputs=[previews, image, status, seed, last],
            api_name="generate", show_progress="minimal", show_progress_on=[status], **on_device,
        )
        stop.click(None, cancels=[generating])
        inside = [bits_view, added_view, entropy_view, inside_text]
        generating.success(h.scale_range, [last], [scale], api_name="scale_range", api_visibility="private",
                           queue=False).then(
            h.inspect_scale, [scale, last], inside, api_name="inspect_last", api_visibility="private",
            preprocess=False,
        )
        scale.release(h.inspect_scale, [scale, last], inside, api_name="inspect_scale", preprocess=False)
        sc_run.click(
            gpu(h.self_correction_tokenizer), [sc_image, sc_aspect, sc_scales, sc_fraction, sc_seed, sc_tokenizer],
            [sc_sheet, sc_plot, sc_text], api_name="self_correction_tokenizer", **on_device,
        )
        gi_run.click(
            gpu(h.self_correction_generation), [gi_prompt, gi_aspect, gi_seed, gi_scale, gi_fraction],
            [gi_clean, gi_flipped, gi_diff, gi_plot, gi_text], api_name="self_correction_generation", **on_device,
        )
        pa_run.click(gpu(h.self_correction_pair), [pa_scene, pa_scale, pa_fraction, pa_seed, pa_count],
                     [pa_sheet, pa_text], api_name="self_correction_pair", **on_device)
        # Gradio 6.31's plot keeps the colour domain of its first drawing: a series not in it gets no line, until
        # a setting such as color_map changes. The colours follow the data in an event of their own, since the
        # page applies a new value after the other settings of the same update (it would redraw the old data).
        tk_run.click(gpu(h.tokenize), [tk_image, tk_aspect, tk_tokenizer], [tk_sheet, tk_plot, tk_text],
                     api_name="tokenize", **on_device).success(
            h.plot_colors, [tk_plot], [tk_plot], api_name="tokenize_plot_colors", api_visibility="private",
            queue=False, preprocess=False)
        # The status is cleared first, so an error of this run is never shown beside the last run's "Done".
        varying = va_run.click(lambda: "", None, va_status, queue=False, api_visibility="private").then(
            gpu(h.variations, duration=120),
            [va_source, va_image, va_aspect, va_keep, va_count, va_prompt, va_seed, va_randomize, last],
            [va_sheet, va_status], api_name="variations", show_progress="minimal", show_progress_on=[va_status],
            **on_device,
        )
        va_stop.click(None, cancels=[varying])
        va_image.upload(gpu(h.upload_layout), [va_image, va_aspect], [va_source, va_keep], api_name="upload_layout",
                        api_visibility="private", **on_device)

    return demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve Infinity's interactive app.")
    parser.add_argument("--model", default=os.environ.get("INFINITY_MODEL") or None,
                        help="infinity-125m (CPU-sized), infinity-2b, infinity-8b or a model folder (default: "
                             "$INFINITY_MODEL, else the embedded model)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting at most; more are refused")
    parser.add_argument("--concurrency", type=int, default=1, help="model calls running at once on the device")
    args = parser.parse_args(argv)
    if args.max_queue < 1 or args.concurrency < 1:
        parser.error("--max-queue and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    start = time.perf_counter()
    from infinity.app.runtime import import_spaces, load_pipeline, on_zero_gpu, warm_up

    import_spaces()  # ZeroGPU: before anything initialises CUDA (loading the model does)
    try:
        pipe = load_pipeline(args.model, args.device)
    except (OSError, ValueError, RuntimeError) as e:  # missing weights, broken folder, unknown device
        sys.exit(f"app.py: cannot load the model: {e}")
    # The warm-up runs while Gradio is imported and the UI built (torch releases the GIL in its kernels); on a
    # ZeroGPU Space there is no GPU outside a request, so nothing to warm up.
    warming = threading.Thread(target=warm_up, args=(pipe,), name="warm-up")
    if not on_zero_gpu():
        warming.start()
    demo = build_demo(pipe, args.model, max_queue=args.max_queue, concurrency=args.concurrency)
    if warming.is_alive():
        warming.join()
    demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, **launch_options())
    logging.getLogger("app").info("serving %s after %.1f s", demo.local_url, time.perf_counter() - start)
    demo.block_thread()


if __name__ == "__main__":
    main()
