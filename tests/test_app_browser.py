"""The app in a real browser: Playwright (from PyPI) driving Debian's Chromium (`apt-get install -y chromium`; never
`playwright install`), on the embedded model (slowed down where a test watches updates stream in) and, for the
choice of tokenizers, on a tiny random-weight model with small tokenizer files in a temporary folder.

The tests assert properties, not wording: the self-correction conclusion agrees with the numbers printed beside
it, two seeds give visibly different images, an unknown word is named, previews keep the output's aspect ratio,
a plot draws every series of every run on the same page, sheet labels are shown at least as large as the page's
small text and never scaled down with nearest neighbour, variations of an upload keep its objects where they
are, and no page action logs a console error.

Screenshots are written to $INFINITY_TEST_ARTIFACTS (default runs/test-artifacts/), one of the live generation and
one per tab; with INFINITY_SCREENSHOTS_DIR=docs/screenshots the tab screenshots are written there too (the README's
pictures; add INFINITY_APP_TEST_MODEL=assets/embedded to take them with the embedded model).
"""
import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import SlowStream, served, write_tokenizer_files
from PIL import Image
from test_app_handlers import assert_conclusion_follows_the_numbers

from infinity.app import sheets
from infinity.app.vocabulary import SEVERAL_EXAMPLE
from infinity.app.handlers import ALL_TOKENIZERS
from infinity.app.pair import PairSlot
from infinity.app.tokenizers import TokenizerShelf
from infinity.eval.diversity import mean_pixel_difference
from infinity.pipeline import InfinityPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("INFINITY_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
TIMEOUT_MS = 60_000
SEED_PROMPT = "a large green circle at the top"  # leaves the background open
SEED_DIFFERENCE = 20.0  # mean |pixel difference| (of 255) between two seeds' images that a person sees


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def embedded():
    return InfinityPipeline.from_pretrained(None, device="cpu")


@pytest.fixture(scope="module")
def url(embedded):
    with served(embedded, model=None) as url:  # as `python app.py` serves it
        yield url


@pytest.fixture(scope="module")
def tiny_url(app_pipe, tmp_path_factory):
    with served(app_pipe, tokenizers_dir=write_tokenizer_files(tmp_path_factory.mktemp("tokenizers"))) as url:
        yield url


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(url)
    return page


@pytest.fixture
def page(browser, url):
    page = open_page(browser, url)
    yield page
    page.close()


def no_console_errors(page) -> None:
    assert page.console_errors == [], page.console_errors


def settle(page) -> None:
    """Scroll through the page so lazily loaded images and plots render, then wait until every image has loaded."""
    for y in range(0, page.evaluate("document.body.scrollHeight"), 500):
        page.evaluate(f"window.scrollTo(0, {y})")
        time.sleep(0.05)
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.evaluate("window.scrollTo(0, 0)")


def screenshot(page, name: str, docs: bool = False) -> Path:
    settle(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    if docs and os.environ.get("INFINITY_SCREENSHOTS_DIR"):
        folder = Path(os.environ["INFINITY_SCREENSHOTS_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return path


def image_of(page, selector: str) -> Image.Image:
    """The image an <img> shows, fetched from the server."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def generate(page, pipe, prompt: str, seed: int | None = None) -> str:
    """Run a generation from the Generate tab; returns the status text once it is done. The pipeline is slowed a
    little, so that the run is seen starting ("Scale k/K") before its "Done" is waited for."""
    page.locator("#prompt textarea").fill(prompt)
    if seed is not None:
        page.locator("#randomize input").set_checked(False)
        page.locator("#seed input").fill(str(seed))
    status = page.locator("#status")
    with SlowStream(pipe, delay=0.3):
        page.locator("#generate").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('Scale ')")
        page.wait_for_function("""() => {
            const text = document.querySelector('#status').innerText;
            return text.includes('Done: seed') && !text.includes('processing');
        }""")
    page.locator("#image img").wait_for()
    return status.inner_text()


def test_previews_stream_in_one_sheet_in_the_outputs_aspect_ratio(page, embedded):
    schedule = embedded.schedule("3:2")
    choose(page, "#aspect", "3:2")
    srcs, boxes = [], set()
    with SlowStream(embedded, delay=0.4):
        page.locator("#prompt textarea").fill("a large red circle at the top left")
        page.locator("#generate").click()
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while page.locator("#image img").count() == 0:
            assert time.monotonic() < deadline, "no final image"
            preview = page.locator("#previews img")
            if preview.count():
                srcs.append(preview.first.get_attribute("src"))
                box = preview.first.bounding_box()
                boxes.add(box and round(box["height"]))
            time.sleep(0.05)
    path = screenshot(page, "browser_generate")
    assert len(set(srcs)) >= 3, "the previews did not update scale by scale"
    assert len(boxes - {None}) == 1, f"the previews changed size while running: {boxes}"  # no layout jump
    sheet = image_of(page, "#previews")
    lay = sheets.layout(schedule.pixel_hw, schedule.num_scales)
    assert sheet.size == lay.size  # every scale in place, each tile in the output's 3:2
    x0, y0, x1, y1 = lay.box(0, 0)
    H, W = schedule.pixel_hw
    assert abs((x1 - x0) / (y1 - y0) - W / H) < 0.01
    assert image_of(page, "#image").size == (W, H)
    assert path.stat().st_size > 10_000
    no_console_errors(page)


def test_stop_cancels_a_running_generation(page, embedded):
    with SlowStream(embedded, delay=0.8):
        page.locator("#prompt textarea").fill("a large red circle at the top left")
        page.locator("#generate").click()
        page.locator("#previews img").wait_for()
        page.locator("#stop").click()
        time.sleep(4)  # long enough for every remaining scale, had it gone on
    assert page.locator("#image img").count() == 0 and "Done" not in page.locator("#status").inner_text()


def test_bad_input_is_a_message_and_the_page_goes_on(page):
    page.locator("#generate").click()  # empty prompt
    page.get_by_text("Please enter a prompt: it is empty.").wait_for()
    page.locator("#prompt textarea").fill("x" * 10_000)
    page.locator("#generate").click()
    page.get_by_text("The prompt is 10,000 characters long").wait_for()
    page.locator("#prompt textarea").fill("🦊 in the snow")
    page.locator("#generate").click()
    page.locator("#image img").wait_for()


def test_unknown_words_are_named_and_seeds_change_the_image(page, embedded):
    status = generate(page, embedded, "a purple giraffe in the center", seed=0)
    assert "'giraffe'" in status and "'purple'" not in status.split("vocabulary")[-1]
    images = []
    for seed in (0, 1, 2, 3):
        status = generate(page, embedded, SEED_PROMPT, seed=seed)
        assert f"Done: seed {seed} " in status and "vocabulary" not in status
        images.append(np.asarray(image_of(page, "#image")))
    assert mean_pixel_difference(images) > SEED_DIFFERENCE
    no_console_errors(page)


def test_every_tab(page, embedded):
    generate(page, embedded, SEVERAL_EXAMPLE)  # two objects, as the banner says to ask for them
    assert "Measured on held-out prompts" in page.inner_text("#banner")  # how often it gets them right, from its ledger
    screenshot(page, "generate", docs=True)
    assert_labels_legible(page, "#previews")

    page.get_by_role("tab", name="Inside each scale").click()
    page.get_by_text("Bit entropy of the model's predictions").wait_for()  # filled in after the generation
    screenshot(page, "inside_each_scale", docs=True)

    page.get_by_role("tab", name="Self-correction").click()
    page.locator("#sc-tokenizer").click()
    page.locator("#sc-text table").wait_for()
    assert_conclusion_follows_the_numbers(markdown_of(page, "#sc-text"))
    screenshot(page, "self_correction_tokenizer", docs=True)
    assert_labels_legible(page, "#sc-sheet")
    page.get_by_role("tab", name="Generation level").click()
    page.locator("#sc-generation").click()
    page.get_by_text("Later scales changed").wait_for()
    screenshot(page, "self_correction_generation", docs=True)
    if PairSlot().info() is not None:  # the shipped pair (assets/self-correction)
        page.get_by_role("tab", name="Trained with vs without").click()
        page.locator("#sc-pair").click()
        page.get_by_text("held-out scenes,").wait_for()
        assert_pair_conclusion_follows_the_means(page.inner_text("#pa-text"))
        screenshot(page, "self_correction_pair", docs=True)
        assert_labels_legible(page, "#pa-sheet")

    page.get_by_role("tab", name="Tokenizer", exact=True).click()
    page.locator("#tk-image input[type=file]").set_input_files(str(ROOT / "assets" / "examples" / "coffee.png"))
    page.locator("#tokenize").click()
    page.get_by_text("after the last.").wait_for()
    screenshot(page, "tokenizer", docs=True)  # a held-out photograph

    page.get_by_role("tab", name="Variations").click()
    page.locator("#variations").click()
    page.get_by_text("Done: 4 variations").wait_for()
    page.get_by_text("the images differ from one another by").wait_for()
    screenshot(page, "variations", docs=True)
    no_console_errors(page)


def plot_lines(page, selector: str) -> dict[str, str]:
    """The lines a Vega plot drew: stroke colour -> the SVG path, for every line with a colour (a series outside
    the plot's colour domain is drawn without one, that is not at all)."""
    return page.evaluate("""(sel) => Object.fromEntries(
        Array.from(document.querySelectorAll(sel + ' .mark-line.role-mark path'))
            .filter(p => p.getAttribute('stroke') && (p.getAttribute('d') || '').length > 0)
            .map(p => [p.getAttribute('stroke'), p.getAttribute('d')]))""", selector)


def assert_labels_legible(page, selector: str) -> None:
    """The sheet's labels, at the size the page shows the sheet, are no smaller than the page's own small text
    (Gradio's --text-sm), and a sheet shown smaller than its pixels is not scaled with nearest neighbour (that
    drops rows and columns of the letters: "dB" reads "d3")."""
    shown = page.evaluate("""(sel) => {
        const img = document.querySelector(sel + ' img');
        return {natural: img.naturalWidth, width: img.getBoundingClientRect().width,
                rendering: getComputedStyle(img).imageRendering,
                small_text: parseFloat(getComputedStyle(document.body).getPropertyValue('--text-sm'))};
    }""", selector)
    label_px = sheets.LABEL_FONT_SIZE * shown["width"] / shown["natural"]
    assert label_px >= shown["small_text"], f"{selector}: labels at {label_px:.1f} CSS px ({shown})"
    assert shown["width"] >= shown["natural"] or shown["rendering"] != "pixelated", f"{selector}: {shown}"


def wait_for_new(page, selector: str, before: str | None) -> None:
    """Wait until the <img> under `selector` shows another file than `before` and no progress is shown."""
    page.wait_for_function("""([sel, before]) => {
        const img = document.querySelector(sel + ' img');
        return img && img.getAttribute('src') !== before && img.complete && img.naturalWidth > 0
            && !document.querySelector('.progress-text');
    }""", arg=[selector, before])


def tokenize(page, choice: str) -> None:
    """Run the Tokenizer tab with `choice` and wait until its new sheet is shown."""
    choose(page, "#tk-tokenizer-choice", choice)
    sheet = page.locator("#tk-sheet img")
    before = sheet.get_attribute("src") if sheet.count() else None
    page.locator("#tokenize").click()
    wait_for_new(page, "#tk-sheet", before)


def test_tokenizer_runs_on_one_page_redraw_the_plot(page, embedded):
    """One page, three runs with other tokenizers each: every run's plot draws a line per tokenizer."""
    labels = TokenizerShelf(embedded).choices  # the model's own and the shipped general tokenizers
    page.get_by_role("tab", name="Tokenizer", exact=True).click()
    for choice, series in ((labels[0], 1), (labels[1], 1), (ALL_TOKENIZERS, len(labels))):
        tokenize(page, choice)
        page.wait_for_function("(n) => document.querySelectorAll('#tk-plot .mark-line.role-mark path').length >= n",
                               arg=series)
        time.sleep(0.5)  # the plot draws its new data
        lines = plot_lines(page, "#tk-plot")
        assert len(lines) == series, f"{choice}: {len(lines)} of {series} lines drawn"
    screenshot(page, "browser_tokenizer_all")
    no_console_errors(page)


def test_tokenizer_sheets_keep_the_result_on_the_inputs_row_legibly(page, embedded):
    """The input and every scale on one row, for one tokenizer and for all side by side; labels legible."""
    labels = TokenizerShelf(embedded).choices
    schedule = embedded.schedule("1:1")  # the example scene is square
    page.get_by_role("tab", name="Tokenizer", exact=True).click()
    for choice, series in ((labels[0], 1), (ALL_TOKENIZERS, len(labels))):
        tokenize(page, choice)
        lay = sheets.layout(schedule.pixel_hw, schedule.num_scales + 1, series, titled=series > 1)
        assert image_of(page, "#tk-sheet").size == lay.size and lay.rows_per_series == 1, lay
        settle(page)
        assert_labels_legible(page, "#tk-sheet")
    no_console_errors(page)


def test_variations_of_an_upload_keep_its_layout(page, embedded):
    """An uploaded scene with a new prompt: every variation has its objects where the upload has them (the
    foreground, pixels far from the background colour, overlaps at least half)."""
    upload = ROOT / "assets" / "examples" / "scene.png"
    page.get_by_role("tab", name="Variations").click()
    page.locator("#va-image input[type=file]").set_input_files(upload)
    page.locator("#va-image img").wait_for()
    time.sleep(1)  # the upload's own event runs
    page.get_by_label("uploaded image").check()
    page.locator("#va-prompt textarea").fill("a small blue square in the center")
    page.locator("#variations").click()
    page.get_by_text("Done: 4 variations").wait_for()
    sheet = image_of(page, "#va-sheet")
    hw = embedded.schedule("1:1").pixel_hw
    lay = sheets.layout(hw, 5)
    expected = foreground(Image.open(upload))
    for i in range(1, 5):
        overlap = foreground(sheet.crop(lay.box(0, i)))
        iou = (overlap & expected).sum() / (overlap | expected).sum()
        assert iou >= 0.5, f"variation {i}: its objects overlap the upload's by {iou:.2f}"
    assert_labels_legible(page, "#va-sheet")
    no_console_errors(page)


def foreground(img: Image.Image, side: int = 16) -> np.ndarray:
    """Where `img`, reduced to side x side, differs from its top-left colour (the background) by over 60/255."""
    a = np.asarray(img.convert("RGB").resize((side, side), Image.Resampling.BOX), np.float32)
    return np.abs(a - a[0, 0]).max(-1) > 60


def test_tokenizer_choice_in_both_tabs(browser, tiny_url):
    page = open_page(browser, tiny_url)
    try:
        page.get_by_role("tab", name="Tokenizer", exact=True).click()
        choose(page, "#tk-tokenizer-choice", "all, side by side")
        page.locator("#tokenize").click()
        page.get_by_text("general-d16 (16 bits per token)").wait_for()
        assert "general-d8 (8 bits per token)" in page.locator("#tk-text").inner_text()
        page.get_by_role("tab", name="Self-correction").click()
        choose(page, "#sc-tokenizer-choice", "general-d8")
        page.locator("#sc-tokenizer").click()
        page.get_by_text("Tokenizer: general-d8.").wait_for()
        assert_conclusion_follows_the_numbers(markdown_of(page, "#sc-text"))
        no_console_errors(page)
    finally:
        page.close()


def assert_pair_conclusion_follows_the_means(text: str) -> None:
    """Each model's mean dB over the scenes and the verdict the page printed under them."""
    means = dict(re.findall(r"trained (with|without) self-correction[^:\n]*: ([0-9.]+) dB", text))
    gap = float(means["with"]) - float(means["without"])
    verdict = ("came back closer to the clean reconstruction" if gap > 0.1 else
               "did not help" if gap < -0.1 else "no measurable effect")
    assert verdict in text, text


def markdown_of(page, selector: str) -> str:
    """A Markdown component's text with its tables back in Markdown rows (| a | b |), as the handler wrote them."""
    return page.evaluate("""(sel) => {
        const root = document.querySelector(sel);
        const lines = [];
        root.querySelectorAll('p, tr').forEach(el => {
            if (el.tagName === 'TR') {
                lines.push('| ' + Array.from(el.children).map(c => c.innerText.trim()).join(' | ') + ' |');
            } else { lines.push(el.innerText); }
        });
        return lines.join('\\n');
    }""", selector)
