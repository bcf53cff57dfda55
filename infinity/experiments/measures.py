"""What the claims experiment measures on a trained arm or a tokenizer, besides the recovery curve
(`infinity.eval.recovery`) and prompt adherence (`infinity.eval.shapes`).

- `heldout_likelihood`: teacher-forced loss of a transformer on held-out scenes, in nats per bit (the training
  loss's scale, the same for both heads: -log p(a token's d bits) / d), with clean histories and no guidance, and
  the share of bits its most likely token gets right. Sampling plays no part: the fairest head-to-head figure.
- `tokenizer_on_scenes`: PSNR after every scale (F_k decoded) and the scene parser's pass rate on the final
  reconstruction, held-out scenes at 128 px on a schedule made for the tokenizer's patch size.
- `index_head_sizes`: how the index-wise head's parameters and logits grow with d against the bitwise head's (the
  paper's argument for the bitwise classifier: 2^d against 2d outputs per token).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..data.scene_parser import parse_image, scene_matches
from ..data.shapes import Scene, caption, render
from ..eval.shapes import to_tensor_np, to_uint8
from ..eval.tokenizers import reconstruct, tokenizer_psnr_per_scale
from ..images import to_tensor
from ..schedules import square_schedule
from ..tokenizer import BitwiseTokenizer
from ..tokenizer.model import latent_scales
from ..transformer import Infinity, TransformerConfig
from ..transformer.losses import bitwise_cross_entropy, index_cross_entropy, predicted_bits


@torch.no_grad()
def heldout_likelihood(pipe, scenes: Sequence[Scene], batch_size: int = 16) -> dict[str, float]:
    """{"nats_per_bit", "bit_accuracy"} of the pipeline's transformer, teacher-forced on the scenes (1:1)."""
    schedule = pipe.schedule("1:1")
    H, W = schedule.pixel_hw
    s, model = pipe.spatial_patch, pipe.transformer
    loss_fn = bitwise_cross_entropy if model.config.head == "bits" else index_cross_entropy
    nats = correct = 0.0
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        x = torch.cat([to_tensor_np(render(sc, H, W)) for sc in chunk]).to(pipe.device)
        codes = pipe.tokenizer.quantize(pipe.tokenizer.encode(x), latent_scales(schedule.scales, s))
        x_BLd = pipe.tokenizer.teacher_forcing_inputs(codes, s).to(model.pos_start.dtype)
        targets_BLd = pipe.tokenizer.targets(codes, s)
        text_BTE, lens_B = pipe.text_encoder.encode([caption(sc) for sc in chunk])
        logits_BLV = model(text_BTE.to(pipe.device, x_BLd.dtype), lens_B.to(pipe.device), x_BLd, schedule).float()
        ones_L = torch.ones(targets_BLd.shape[1])
        nats += float(loss_fn(logits_BLV, targets_BLd, ones_L)) * len(chunk)
        d = targets_BLd.shape[-1]
        correct += float((predicted_bits(logits_BLV, d, model.config.head) == targets_BLd).float().mean()) * len(chunk)
    return {"nats_per_bit": round(nats / len(scenes), 5), "bit_accuracy": round(correct / len(scenes), 5)}


def tokenizer_on_scenes(tokenizer: BitwiseTokenizer, scenes: Sequence[Scene], pixels: int = 128,
                        batch_size: int = 16) -> dict:
    """{"bits", "scales", "psnr_db_per_scale", "psnr_db", "parser_pass"} on the scenes at `pixels` px: the
    evaluator's per-scale PSNR (`infinity.eval.tokenizers`) on the rendered scenes, and the parser on the final
    reconstructions."""
    schedule = square_schedule(pixels, tokenizer.config.patch_size)
    renders = [Image.fromarray(render(sc, pixels, pixels)) for sc in scenes]
    per_scale = np.array(tokenizer_psnr_per_scale(tokenizer, schedule, renders, batch_size)).mean(axis=1)
    passes = 0
    for start in range(0, len(scenes), batch_size):
        x = torch.cat([to_tensor(img) for img in renders[start:start + batch_size]])
        final = to_uint8(reconstruct(tokenizer, x))
        passes += sum(scene_matches(parse_image(img), sc) for img, sc in zip(final, scenes[start:start + batch_size]))
    return {"bits": tokenizer.bits, "scales": [list(g) for g in schedule.scales],
            "psnr_db_per_scale": per_scale.round(3).tolist(), "psnr_db": round(float(per_scale[-1]), 3),
            "parser_pass": round(passes / len(scenes), 4)}


def index_head_sizes(config: TransformerConfig, tokens: int, batch: int, ds: Sequence[int]) -> list[dict]:
    """Per d: parameters of the index head (C x 2^d + 2^d) and of the bitwise head (C x 2d + 2d), the fp32 logits
    of one training batch (batch x tokens x outputs x 4 bytes) of each, and the rest of the model at that d."""
    rows = []
    C = config.width
    for d in ds:
        index_out, bits_out = 2**d, 2 * d
        bitwise = Infinity(dataclasses.replace(config, bits=d, head="bits"))
        rest = sum(p.numel() for p in bitwise.parameters()) - (C + 1) * bits_out
        rows.append({"d": d, "width": C, "tokens": tokens, "batch": batch, "rest_of_model_params": rest,
                     "index_head_params": (C + 1) * index_out, "bits_head_params": (C + 1) * bits_out,
                     "index_logits_bytes": 4 * batch * tokens * index_out,
                     "bits_logits_bytes": 4 * batch * tokens * bits_out})
    return rows
