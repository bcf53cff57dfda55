"""The app in a real browser: Playwright (from PyPI) driving Debian's Chromium (`apt-get install -y chromium`; never
`playwright install`), on a tiny random-weight model slowed down so every streamed update is visible.

Screenshots are written to $INFINITY_TEST_ARTIFACTS (default runs/test-artifacts/), one of the live generation and
one per tab; with INFINITY_SCREENSHOTS_DIR=docs/screenshots the tab screenshots are written there too (the README's
pictures; add INFINITY_APP_TEST_MODEL=assets/embedded to take them with the embedded model).
"""
import os
import shutil
import time
from pathlib import Path

import pytest
from app_helpers import SlowStream, served

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("INFINITY_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts"))
TIMEOUT_MS = 30_000


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
def url(app_pipe):
    with served(app_pipe) as url:
        yield url


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    yield page
    page.close()


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


def wait_for_count(locator, n: int) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while locator.count() < n:
        assert time.monotonic() < deadline, f"waited for {n} of {locator}, saw {locator.count()}"
        time.sleep(0.05)


def test_previews_stream_in_before_the_final_image(page, app_pipe):
    K = app_pipe.schedule(app_pipe.aspect_ratios[0]).num_scales
    previews, final, status = page.locator("#previews img"), page.locator("#image img"), page.locator("#status")
    with SlowStream(app_pipe, delay=0.4):
        page.locator("#prompt textarea").fill("a red cube")
        page.locator("#generate").click()
        seen = []  # (previews shown, final image shown, status text), polled until the final image is there
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not seen or not seen[-1][1]:
            assert time.monotonic() < deadline, f"no final image; saw {seen[-5:]}"
            seen.append((previews.count(), final.count() > 0, status.inner_text()))
            time.sleep(0.05)
    path = screenshot(page, "browser_generate")
    before_final = [(n, text) for n, shown, text in seen if not shown]
    counts = sorted({n for n, _ in before_final if n})
    assert len(counts) >= 2 and counts[-1] >= K - 1, f"previews did not fill in one by one: {counts}"
    assert any(text.startswith("Scale ") for _, text in before_final)  # progress went to the status line
    assert previews.count() == K and "Done: seed" in status.inner_text()
    assert path.stat().st_size > 10_000


def test_stop_cancels_a_running_generation(page, app_pipe):
    K = app_pipe.schedule(app_pipe.aspect_ratios[0]).num_scales
    previews = page.locator("#previews img")
    with SlowStream(app_pipe, delay=0.8):
        page.locator("#prompt textarea").fill("a red cube")
        page.locator("#generate").click()
        wait_for_count(previews, 1)
        page.locator("#stop").click()
        time.sleep(2.5)  # long enough for every remaining scale, had it gone on
    assert page.locator("#image img").count() == 0 and previews.count() < K


def test_bad_input_is_a_message_and_the_page_goes_on(page):
    page.locator("#generate").click()  # empty prompt
    page.get_by_text("Please enter a prompt: it is empty.").wait_for()
    page.locator("#prompt textarea").fill("x" * 10_000)
    page.locator("#generate").click()
    page.get_by_text("The prompt is 10,000 characters long").wait_for()
    page.locator("#prompt textarea").fill("🦊 in the snow")
    page.locator("#generate").click()
    page.locator("#image img").wait_for()


def test_every_tab(page):
    page.locator("#prompt textarea").fill("a large red circle at the top left on a black background")
    page.locator("#generate").click()
    page.locator("#image img").wait_for()
    page.get_by_text("Done: seed").wait_for()
    screenshot(page, "generate", docs=True)

    page.get_by_role("tab", name="Inside each scale").click()
    page.get_by_text("Bit entropy of the model's predictions").wait_for()  # filled in after the generation
    screenshot(page, "inside_each_scale", docs=True)

    page.get_by_role("tab", name="Self-correction").click()
    page.locator("#sc-tokenizer").click()
    page.get_by_text("Re-quantization lets the later scales correct the flips").wait_for()
    screenshot(page, "self_correction_tokenizer", docs=True)
    page.get_by_role("tab", name="Generation level").click()
    page.locator("#sc-generation").click()
    page.get_by_text("Later scales changed").wait_for()
    screenshot(page, "self_correction_generation", docs=True)

    page.get_by_role("tab", name="Tokenizer", exact=True).click()
    page.locator("#tokenize").click()
    page.get_by_text("after the last.").wait_for()
    screenshot(page, "tokenizer", docs=True)

    page.get_by_role("tab", name="Variations").click()
    page.locator("#variations").click()
    page.get_by_text("Done: 4 variations").wait_for()
    screenshot(page, "variations", docs=True)
