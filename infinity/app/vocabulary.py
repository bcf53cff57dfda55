"""What a shapes model can draw, and which words of a prompt it never saw.

A model trained on the procedural shapes scenes (the embedded one) knows only the words of their captions
(`infinity.data.shapes`). It is recognised by its example prompts: when every one is a shapes caption, the app
says in one line what the model can draw and names the words of a prompt outside that vocabulary (the prompt
still runs). A released model's examples are ordinary sentences, so it gets no such notice.
"""
from __future__ import annotations

import re

from ..data.shapes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, caption, parse_caption
from ..eval.diversity import VISIBLE_DIFFERENCE

# The glue of the captions: "a large red circle at the top left, a ... and a ... on a black background".
_GLUE = ("a", "an", "and", "background")
SHAPES_WORDS = frozenset(
    w for phrase in (*COLORS, *SHAPES, *SIZES, *POSITIONS, *BACKGROUNDS, *_GLUE) for w in phrase.split()
)
_WORD = re.compile(r"[^\W\d_]+|\d+")
_COUNTS = frozenset({"two", "three", "2", "3", "several", "some", "many"} | {s + "s" for s in SHAPES})

# How a prompt asks for several objects: one phrase per object, as the training captions do.
SEVERAL_EXAMPLE = caption(Scene((ShapeObject("circle", "red", "large", "at the top left"),
                                 ShapeObject("square", "blue", "small", "at the bottom right"))))


def is_shapes_model(pipe) -> bool:
    """Whether the pipeline's example prompts are all shapes captions (and there is at least one)."""
    return bool(pipe.examples) and all(parse_caption(p) is not None for p in pipe.examples)


def unknown_words(prompt: str, vocabulary: frozenset[str] = SHAPES_WORDS) -> list[str]:
    """The words of `prompt` (letters or digits, lowercased) not in `vocabulary`, each once, in prompt order."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(prompt.lower()):
        if word not in vocabulary:
            seen.setdefault(word)
    return list(seen)


def can_draw() -> str:
    """One line on what a shapes model draws."""
    return (
        f"This model was trained on shapes scenes only: one to three {', '.join(s + 's' for s in SHAPES[:-1])} or "
        f"{SHAPES[-1]}s, {' or '.join(SIZES)}, {', '.join(COLORS)}, in a 3x3 grid ({', '.join(list(POSITIONS)[:2])}, "
        f"...), on a {', '.join(list(BACKGROUNDS)[:-1])} or {list(BACKGROUNDS)[-1]} background or one left open. "
        f"Several objects: one phrase each, with its size and position, e.g. \"{SEVERAL_EXAMPLE}\"."
    )


def how_often(evaluation: dict) -> str:
    """One line on how often the model draws what it is asked, from an evaluation row of the embedded model's
    training ledger (`infinity.campaigns`): scenes right per object count, and the prompts whose seeds differ."""
    words = {"1": "one object", "2": "two objects", "3": "three objects"}
    right = [f"{words[n]} in {round(evaluation['adherence'][n] * scenes)} of {scenes}"
             for n, scenes in zip(("1", "2", "3"), evaluation["scenes"]) if scenes]
    return (
        f"Measured on held-out prompts at the default settings, the image holds everything asked for and nothing "
        f"else (read by the scene parser) for {', '.join(right)}; seeds change the image visibly "
        f"(>= {VISIBLE_DIFFERENCE:g}/255) for {evaluation['prompts_over_spread_target']} of "
        f"{evaluation['open_prompts']} prompts that leave the background open."
    )


def notice(prompt: str) -> str:
    """The sentence shown beside a result whose prompt has unknown words ("" when it has none)."""
    words = unknown_words(prompt)
    if not words:
        return ""
    quoted = ", ".join(f"'{w}'" for w in words)
    text = (f"Not in this model's vocabulary: {quoted}. It draws only shapes scenes, so the image follows the words "
            f"it knows, if any.")
    if any(w in _COUNTS for w in words):
        text += f" For several objects, describe each one: \"{SEVERAL_EXAMPLE}\"."
    return text
