"""Do the tokenizers keep an image's colours? The beige background and the red circle of the app's shapes example,
and the red saucer of its photograph: each region's mean colour in the input and in the reconstruction (at the size
the app gives the image), and their CIE76 colour difference (Euclidean in CIELAB, through Pillow's ImageCms).
A region counts as kept when the difference is at most KEPT_DELTA_E: about where a colour changes its name (beige
to white is about 16).
    PYTHONPATH=. python benchmarks/tokenizer_colours.py --out benchmarks/results/tokenizer_colours.json
"""
import argparse
import json
import os

import numpy as np
import torch
from PIL import Image, ImageCms

from infinity.eval.tokenizers import load_tokenizer, photo_reconstruction
from infinity.images import open_image
from infinity.precision import cpu_model

KEPT_DELTA_E = 10.0
TOKENIZERS = {"embedded (the model's own)": "assets/embedded/tokenizer.safetensors",
              **{f"general-d{d}": f"assets/tokenizers/general-d{d}.safetensors" for d in (8, 16, 32)}}
_TO_LAB = ImageCms.buildTransformFromOpenProfiles(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                                  "RGB", "LAB")


def lab(rgb) -> np.ndarray:
    """CIELAB of one sRGB colour (0..255): Pillow stores L* scaled to 0..255 and a*, b* offset by 128."""
    L, a, b = ImageCms.applyTransform(Image.new("RGB", (1, 1), tuple(int(round(c)) for c in rgb)), _TO_LAB).getpixel(
        (0, 0))
    return np.array([L * 100 / 255, a - 128, b - 128], dtype=np.float64)


def _levels(x_13HW: torch.Tensor) -> np.ndarray:
    return ((x_13HW[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()


def background(x_HW3: np.ndarray) -> np.ndarray:
    """Pixels within 20 levels of the median colour of the image's border."""
    border = np.concatenate([x_HW3[0], x_HW3[-1], x_HW3[:, 0], x_HW3[:, -1]])
    return np.abs(x_HW3 - np.median(border, axis=0)).max(-1) <= 20


def red(x_HW3: np.ndarray) -> np.ndarray:
    """Pixels whose red exceeds both green and blue by at least 60 levels."""
    return x_HW3[..., 0] - x_HW3[..., 1:].max(-1) >= 60


REGIONS = {"shapes example: beige background": ("assets/examples/shapes.png", background),
           "shapes example: red circle": ("assets/examples/shapes.png", red),
           "photograph: red saucer and cup": ("assets/examples/coffee.png", red)}

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
args = ap.parse_args()
torch.set_num_threads(1)
results = []
for label, path in TOKENIZERS.items():
    tokenizer = load_tokenizer(path).float()
    for region, (image_path, select) in REGIONS.items():
        x, y = (_levels(t) for t in photo_reconstruction(tokenizer, open_image(image_path)))
        mask = select(x)
        rgb_in, rgb_out = x[mask].mean(0), y[mask].mean(0)
        delta_e = float(np.linalg.norm(lab(rgb_in) - lab(rgb_out)))
        results.append({"tokenizer": label, "file": path, "region": region, "image": image_path,
                        "pixels": int(mask.sum()), "input_rgb": [round(float(c), 1) for c in rgb_in],
                        "reconstruction_rgb": [round(float(c), 1) for c in rgb_out],
                        "delta_e76": round(delta_e, 2), "kept": delta_e <= KEPT_DELTA_E})
        print(json.dumps(results[-1]), flush=True)
json.dump({"what": __doc__.split("\n    PYTHONPATH")[0], "kept_delta_e76": KEPT_DELTA_E, "cpu": cpu_model(),
           "load_average": [round(v, 2) for v in os.getloadavg()], "results": results}, open(args.out, "w"), indent=1)
