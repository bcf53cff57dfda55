"""Helpers of the app's tests: serve the app (`python app.py` in a subprocess, or a demo in-process) on a free local
port, slow a pipeline down so a browser can watch it stream, and write image files that are not what they claim."""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(pipe, model: str | None = "test model", **build_options):
    """The app of `pipe` (app.build_demo, named `model`: None as `python app.py` names the embedded model) served
    on 127.0.0.1; yields its URL, closes it after."""
    import app

    demo = app.build_demo(pipe, model, **build_options)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_options())
    try:
        yield demo.local_url
    finally:
        demo.close()


@contextlib.contextmanager
def launched(model: str | os.PathLike, log: Path, timeout: float = 120.0):
    """`python app.py --model MODEL` on 127.0.0.1 and a free port, as a person starts it; yields (url, seconds until
    it answered HTTP), stops it after. Its output goes to `log`."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.one_thread
    env.pop("GRADIO_SERVER_NAME", None)
    no_tokenizers = log.parent / "no-general-tokenizers"  # the tests' model meets only its own tokenizer
    no_tokenizers.mkdir(exist_ok=True)
    env["INFINITY_TOKENIZERS_DIR"] = str(no_tokenizers)
    start = time.perf_counter()
    with open(log, "w") as out:
        app = subprocess.Popen([sys.executable, "app.py", "--model", str(model), "--port", str(port)], cwd=ROOT,
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if app.poll() is not None or time.perf_counter() - start > timeout:
                raise RuntimeError(f"app.py did not serve (exit code {app.poll()}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, time.perf_counter() - start
    finally:
        app.terminate()
        app.wait(30)


class SlowStream:
    """Replaces `pipe.stream` (on the instance) with one that waits `delay` seconds after each scale, so that
    updates reach a browser one by one. Use as a context manager; `delay` can be changed in between."""

    def __init__(self, pipe, delay: float):
        self.pipe, self.delay, self.original = pipe, delay, pipe.stream

    def __enter__(self):
        def stream(*args, **kwargs):
            for event in self.original(*args, **kwargs):
                yield event
                time.sleep(self.delay)

        self.pipe.stream = stream
        return self

    def __exit__(self, *exc):
        del self.pipe.stream  # back to the class's method


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG file whose header declares width x height pixels (a decompression bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bad_image_files(folder: Path) -> dict[str, Path]:
    """name -> a file the app must refuse with a message: random bytes, a truncated PNG, a PNG declaring 64 MP
    (over the app's limit), a PNG declaring 10 gigapixels (PIL's DecompressionBombError)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = (Path(__file__).resolve().parents[1] / "assets" / "examples" / "shapes.png").read_bytes()
    (folder / "random.png").write_bytes(bytes(range(256)) * 8)
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return {
        "random bytes": folder / "random.png",
        "truncated": folder / "truncated.png",
        "too large": png_declaring(folder / "large.png", 8000, 8000),
        "decompression bomb": png_declaring(folder / "bomb.png", 100_000, 100_000),
    }


def write_tokenizer_files(folder: Path, bits: tuple[int, ...] = (8, 16)) -> Path:
    """Small random-weight tokenizer files named general-d{bits}.safetensors (our format: the config inside), and
    one file that is not a tokenizer, in `folder`: what the app finds in assets/tokenizers."""
    import torch

    from infinity.checkpoints import save_model
    from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig

    folder.mkdir(parents=True, exist_ok=True)
    for d in bits:
        torch.manual_seed(d)
        config = TokenizerConfig(bits=d, base_channels=32, channel_multipliers=(1, 1, 1), num_res_blocks=1, patch_size=4)
        save_model(BitwiseTokenizer(config).eval(), folder / f"general-d{d}.safetensors")
    (folder / "notes.safetensors").write_bytes(b"not a safetensors file")
    return folder
