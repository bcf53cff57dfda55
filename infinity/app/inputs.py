"""Validation of the values the browser or an API client sends: each function returns the value in the type the
app uses, or raises ValueError with a sentence a person can act on (the handlers show it as a gr.Error).

The app's events take their inputs unprocessed (Gradio's `preprocess=False`), so these checks see exactly what
arrived: an API client can send NaN, a string, a seed of 2**70 or a file that is not an image, and each one
gets its own message here rather than an error from inside a component.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Sequence

from PIL import Image, UnidentifiedImageError

from ..options import MAX_PROMPT_CHARS, MAX_SEED
MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels: any photo; larger is refused before its pixels are decoded


def prompt_text(value, name: str = "prompt", required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"The {name} must be text, got {type(value).__name__}.")
    if required and not value.strip():
        raise ValueError(f"Please enter a {name}: it is empty.")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"The {name} is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,} are accepted "
            "(the text encoder reads only the first few dozen words anyway)."
        )
    return value


def number(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """A finite float in [low, high] (low excluded when low_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value:g}.")
    return value


def integer(name: str, value, low: int, high: int) -> int:
    """An integer in [low, high]; whole floats (3.0, as JSON may carry them) are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:,} and {high:,}, got {value:,}.")
    return value


def seed(value) -> int:
    return integer("seed", value, 0, MAX_SEED)


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    return value


def choice(name: str, value, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}.")
    return value


def _upload_path(payload) -> str | None:
    """The server-side path of an uploaded file: Gradio sends a FileData dict {"path": ...}; a str is a path."""
    if payload is None or isinstance(payload, (str, os.PathLike)):
        return payload and os.fspath(payload)
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", None)


def read_image(payload, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded image as PIL RGB. Its declared size is checked before any pixel is decoded, so a
    decompression bomb (a small file that claims billions of pixels) costs nothing; unreadable files and
    images PIL itself flags as bombs are refused with a message."""
    path = _upload_path(payload)
    if not path:
        raise ValueError("Please upload an image first.")
    limit = f"at most {max_pixels / 1e6:.0f} megapixels are accepted"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ValueError(f"The image is {width:,} x {height:,} pixels; {limit}.")
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"The image declares a huge size (a decompression bomb?); {limit}.") from None
    except FileNotFoundError:
        raise ValueError("The uploaded file is gone from the server; please upload it again.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        detail = str(e).split(" '/")[0] if str(e) else type(e).__name__  # no server paths in the message
        raise ValueError(f"The uploaded file is not a readable image ({detail}).") from None
