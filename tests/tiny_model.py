"""A tiny random-weight model folder in our format, for the app's tests, its load test and its screenshots.

    python -m tests.tiny_model runs/tiny-model        # then: python app.py --model runs/tiny-model

Same recipe as tests/test_pipeline.py: a 3-level tokenizer (4 px per token, 8 bits), a 2-block transformer, the
MiniLM text encoder (offline), and schedules of 3 or 4 scales (32x32 px square, 24x16 / 16x24 px otherwise).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from infinity.options import SamplingDefaults
from infinity.pipeline import InfinityPipeline
from infinity.schedules import Schedule
from infinity.text import MiniLMTextEncoder
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig

PATCH = 4
TOKENIZER = TokenizerConfig(bits=8, base_channels=32, channel_multipliers=(1, 1, 1), num_res_blocks=1, patch_size=PATCH)
# MiniLM gives E=384 channels; the SOS pool then has 384 // 128 = 3 heads, which must divide the width.
TRANSFORMER = TransformerConfig(
    depth=2, width=96, num_heads=2, bits=8, text_channels=384, text_maxlen=32, max_scales=4, drop_path_rate=0.0
)
SCHEDULES = {
    "1:1": Schedule(((1, 1), (2, 2), (4, 4), (8, 8)), PATCH),
    "3:2": Schedule(((1, 1), (2, 3), (4, 6)), PATCH, h_div_w=0.667),
    "2:3": Schedule(((1, 1), (3, 2), (6, 4)), PATCH, h_div_w=1.5),
}
EXAMPLES = ["a red cube", "two blue spheres"]


def write_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    transformer = Infinity(TRANSFORMER).eval()
    with torch.no_grad():  # the training init makes every block almost the identity; make the weights matter
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pipe = InfinityPipeline(
        BitwiseTokenizer(TOKENIZER).eval(), transformer, MiniLMTextEncoder.from_pretrained(max_length=32),
        SCHEDULES, SamplingDefaults(cfg=3.0, tau=1.0), "tiny", "cpu", torch.float32, examples=EXAMPLES,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return pipe.save_pretrained(folder)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_model FOLDER")
    print(write_tiny_model(sys.argv[1]))
