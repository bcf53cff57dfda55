"""Where the coloured specks of the general tokenizers' reconstructions come from.

    PYTHONPATH=. python benchmarks/tokenizer_speck.py --out benchmarks/results/tokenizer_speck.json

Each tokenizer decodes an all-zero latent at 128x128 (no image at all): any localised mark in that output is the
decoder's own. For every GroupNorm of the decoder the script records the largest absolute input value over
channels, its position and its ratio to the mean absolute value, then the output pixel farthest from the output's
median colour. A single position whose activation grows through the upsampling blocks to hundreds of times the
mean is the normalisation "droplet" artifact described for StyleGAN (Karras et al., 2020, section 2): a spike
that lets the network scale everything else through the normalisation statistics.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from infinity.eval.tokenizers import load_tokenizer
from infinity.precision import cpu_model

SIDE = 128


@torch.no_grad()
def probe(path: str) -> dict:
    tokenizer = load_tokenizer(path)
    norms = []

    def hook(name: str):
        def record(module, inputs, output):
            x_CHW = inputs[0][0].float()
            peak_HW = x_CHW.abs().amax(0)
            y, x = divmod(int(peak_HW.argmax()), peak_HW.shape[1])
            norms.append({"norm": name, "grid": list(peak_HW.shape), "peak": round(float(peak_HW.max()), 2),
                          "peak_over_mean": round(float(peak_HW.max() / x_CHW.abs().mean()), 1), "at": [y, x]})
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in tokenizer.decoder.named_modules()
               if isinstance(m, torch.nn.GroupNorm)]
    side = SIDE // tokenizer.config.patch_size
    img_3HW = tokenizer.decode(torch.zeros(1, tokenizer.bits, side, side))[0]
    for h in handles:
        h.remove()
    median_3 = img_3HW.flatten(1).median(1).values
    dev_HW = (img_3HW - median_3[:, None, None]).abs().amax(0) * 127.5
    y, x = divmod(int(dev_HW.argmax()), SIDE)
    return {"tokenizer": path, "norms": norms, "output_max_deviation_0_255": round(float(dev_HW.max()), 1),
            "output_at": [y, x], "output_pixels_over_32": int((dev_HW > 32).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizers", nargs="+", default=[
        *(f"assets/tokenizers/general-d{d}.safetensors" for d in (8, 16, 32)), "assets/embedded/tokenizer.safetensors"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"what": " ".join(__doc__.split("\n\n")[2].split()), "cpu": cpu_model(), "side": SIDE,
              "tokenizers": [probe(p) for p in args.tokenizers]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
