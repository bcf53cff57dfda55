"""What a Space serving Infinity-125M downloads on its first start, estimated from parameter counts (no download).

    PYTHONPATH=. python benchmarks/space_sizes.py --json benchmarks/results/infinity125m_space_sizes.json

Sizes are the values of each file's tensors at 4 bytes (float32, the dtype the official constructors build; the
released files' stored dtypes were not checked here): the transformer and the tokenizer from the key/shape
manifests of the official checkpoints (tests/fixtures/reference/manifests), Flan-T5-XL from its configuration
(its Hub repo stores the whole encoder-decoder, of which the pipeline uses the encoder). Download times are
those sizes at a few assumed throughputs, not measurements.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

MANIFESTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "manifests"
BYTES_PER_VALUE = 4  # float32
THROUGHPUTS_MB_S = (50, 100, 200)  # assumed download rates of a Space's first start


def manifest_values(name: str) -> int:
    manifest = json.loads((MANIFESTS / name).read_text())
    return sum(math.prod(entry["shape"]) for entry in manifest["state_dict"])


def flan_t5_xl_values() -> tuple[int, int]:
    """(values of the whole checkpoint, values of the encoder) of Flan-T5-XL, built on the meta device."""
    from transformers import T5Config, T5ForConditionalGeneration

    from infinity.bench.models import FLAN_T5_XL_SIZES

    config = T5Config(**FLAN_T5_XL_SIZES, num_decoder_layers=FLAN_T5_XL_SIZES["num_layers"], tie_word_embeddings=False)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    return total, encoder


def sizes() -> dict:
    t5_total, t5_encoder = flan_t5_xl_values()
    files = {
        "FoundationVision/Infinity infinity_125M_256x256.pth": manifest_values("infinity_125m.json"),
        "FoundationVision/Infinity infinity_vae_d16.pth": manifest_values("vae_d16.json"),
        "google/flan-t5-xl (safetensors shards)": t5_total,
    }
    total_bytes = BYTES_PER_VALUE * sum(files.values())
    return {
        "what": "estimates from parameter counts at 4 bytes per value (float32); not measured downloads",
        "files": {name: {"values": n, "bytes": BYTES_PER_VALUE * n} for name, n in files.items()},
        "flan_t5_xl_encoder_values": t5_encoder,
        "total_bytes": total_bytes,
        "download_minutes": {f"{rate} MB/s": total_bytes / (rate * 1e6) / 60 for rate in THROUGHPUTS_MB_S},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the estimates here")
    args = parser.parse_args()
    result = sizes()
    args.json.write_text(json.dumps(result, indent=1))
    for name, f in result["files"].items():
        print(f"{name}: {f['bytes'] / 1e9:.2f} GB")
    print(f"total {result['total_bytes'] / 1e9:.1f} GB; " + ", ".join(
        f"{minutes:.1f} min at {rate}" for rate, minutes in result["download_minutes"].items()))


if __name__ == "__main__":
    main()
