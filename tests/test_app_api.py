"""The app as `python app.py --model DIR` serves it, through its HTTP API (gradio_client), on a tiny random-weight
model: /generate streams one update per scale and then the final image, the same seed gives the same image, the
self-correction and tokenizer endpoints return their images, and bad input gets a message while the server keeps
serving. The comparisons run the same model folder in this process."""
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_helpers import bad_image_files, launched, served
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from infinity.app import sheets
from infinity.app.tokenizers import MODEL_OWN
from infinity.pipeline import InfinityPipeline

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "shapes.png")


@pytest.fixture(scope="module")
def started(app_model_dir, tmp_path_factory):
    with launched(app_model_dir, tmp_path_factory.mktemp("app") / "app.log") as (url, seconds):
        yield url, seconds


@pytest.fixture(scope="module")
def url(started):
    return started[0]


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_python_app_py_serves_on_localhost(started, client):
    url, seconds = started
    assert url.startswith("http://127.0.0.1:") and seconds < 60, f"served after {seconds:.1f} s"
    assert "/generate" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_generate_streams_one_preview_per_scale_then_the_image(client, app_pipe):
    job = client.submit("a red cube", seed=11, randomize_seed=False, api_name="/generate")
    job.result(timeout=60)
    updates = job.outputs()
    K = app_pipe.schedule("1:1").num_scales
    assert len(updates) == K + 1
    W, H = sheets.layout((32, 32), K).size  # one sheet with a place for every scale, from the first update
    for k, (sheet, image, status, seed) in enumerate(updates[:K]):
        assert image is None and status.startswith(f"Scale {k + 1}/{K}") and seed == 11
        assert pixels(sheet).shape == (H, W, 3)
    sheet, image, status, seed = updates[-1]
    assert pixels(sheet).shape == (H, W, 3) and seed == 11 and status.startswith("Done: seed **11**")
    assert np.array_equal(pixels(image), np.asarray(app_pipe("a red cube", seed=11).image))


def test_same_seed_same_image(client):
    a, b, c = (client.predict("two blue spheres", seed=s, randomize_seed=False, api_name="/generate")[1]
               for s in (5, 5, 6))
    assert np.array_equal(pixels(a), pixels(b)) and not np.array_equal(pixels(a), pixels(c))


def test_defaults_and_randomized_seed(client):
    gallery, image, status, seed = client.predict("a red cube", api_name="/generate")  # only the prompt
    assert pixels(image).shape == (32, 32, 3) and f"seed **{seed}**" in status


def test_tokenizer_endpoint(client):
    sheet, plot, text = client.predict(handle_file(EXAMPLE), "auto", api_name="/tokenize")
    W, H = sheets.layout((16, 24), 4).size  # the input and 3 scales, 3:2 tiles
    assert pixels(sheet).shape == (H, W, 3)
    assert [row[0] for row in plot["data"]] == ["1", "2", "3"]
    assert text.startswith(f"{MODEL_OWN} (8 bits per token): aspect ratio 3:2")


def test_self_correction_endpoints(client):
    sheet, plot, text = client.predict(handle_file(EXAMPLE), "1:1", 2, 0.3, 0, api_name="/self_correction_tokenizer")
    W, H = sheets.layout((32, 32), 4, 3, titled=True).size  # three series of 4 scales
    assert pixels(sheet).shape == (H, W, 3) and len(plot["data"]) == 12
    assert text.startswith(f"Tokenizer: {MODEL_OWN}. Flipped 12 bits")
    clean, flipped, diff, plot, text = client.predict(
        "a red cube", "1:1", 3, 2, 0.5, api_name="/self_correction_generation")
    assert all(pixels(p).shape == (256, 256, 3) for p in (clean, flipped, diff))
    assert not np.array_equal(pixels(clean), pixels(flipped)) and text.startswith("Flipped 16 bits (50%)")


def test_inspect_and_variations_follow_the_session(url):
    client = Client(url, verbose=False)  # a session of its own: no generation yet
    with pytest.raises(AppError, match="Generate an image first"):
        client.predict(2, api_name="/inspect_scale")
    client.predict("a red cube", seed=2, randomize_seed=False, api_name="/generate")
    bits, added, overlay, text = client.predict(3, api_name="/inspect_scale")
    assert pixels(overlay).shape == (256, 256, 3) and text.startswith("**Scale 3/4**")
    sheet, status = client.predict("last result", None, "auto", 2, 2, "", 9, False, api_name="/variations")
    assert status.startswith("Done: 2 variations of scales 3-4 with seeds 9-10")
    assert pixels(sheet).shape[::-1][1:] == sheets.layout((32, 32), 3).size


@pytest.mark.parametrize(
    "args, kwargs, text",
    [
        (("",), {}, "Please enter a prompt"),
        (("x" * 10_000,), {}, "The prompt is 10,000 characters long; at most 2,000 are accepted"),
        (("a cube",), {"cfg": -1}, "CFG must be >= 0, got -1."),
        (("a cube",), {"seed": 2**63, "randomize_seed": False}, "seed must be between 0 and 9,007,199,254,740,991"),
        (("a cube",), {"seed": -5, "randomize_seed": False}, "seed must be between 0"),
        (("a cube",), {"aspect_ratio": "21:9"}, "aspect ratio must be one of"),
    ],
)
def test_bad_generate_input_gets_a_message(client, args, kwargs, text):
    with pytest.raises(AppError) as e:
        client.predict(*args, api_name="/generate", **kwargs)
    assert text in str(e.value)


def test_emoji_prompt_generates(client):
    assert pixels(client.predict("🦊 🌋 ✨", api_name="/generate")[1]).shape == (32, 32, 3)


def test_nan_cfg_sent_raw_gets_a_message(url):
    """JSON clients (and gradio_client) refuse to send NaN, but the server must not trust that: post it raw."""
    call = f"{url.rstrip('/')}/gradio_api/call/generate"
    body = '{"data": ["a cube", "", "1:1", NaN, 0, false, 1.0, 0, 0.0]}'
    event_id = httpx.post(call, content=body, headers={"content-type": "application/json"}).json()["event_id"]
    events = httpx.get(f"{call}/{event_id}", timeout=60).text.splitlines()
    assert events[0] == "event: error"
    assert json.loads(events[1].removeprefix("data: "))["error"] == "CFG must be a finite number, got nan."


@pytest.mark.parametrize("name", ["random bytes", "truncated", "too large", "decompression bomb"])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(client, tmp_path, name):
    path = handle_file(str(bad_image_files(tmp_path)[name]))
    for api in ("/tokenize", "/self_correction_tokenizer"):
        with pytest.raises(AppError) as e:
            client.predict(path, api_name=api)
        assert ("decompression bomb" if name == "decompression bomb" else "image") in str(e.value)
    assert client.predict(handle_file(EXAMPLE), "auto", api_name="/tokenize")[2].startswith(MODEL_OWN)


def test_unknown_words_are_named_in_the_status_the_api_returns():
    """On the embedded model (a shapes model); the tiny test model above is not one, and gets no notice."""
    with served(InfinityPipeline.from_pretrained(None, device="cpu")) as url:
        client = Client(url, verbose=False)
        status = client.predict("a cat on a large red square", api_name="/generate")[2]
        assert "'cat'" in status and "'square'" not in status
        assert "vocabulary" not in client.predict("a large red square on the left", api_name="/generate")[2]
