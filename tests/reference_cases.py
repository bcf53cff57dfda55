"""Discovery and comparison helpers for the parity fixtures recorded from the official code.

Cases live in tests/fixtures/reference/ and, when the environment variable INFINITY_REFERENCE_DIR names a
folder of the same format (a folder of cases, or one case), there too. Each case folder holds meta.json
(kind, configuration, schedule, per-tensor tolerances) and tensors.safetensors.

A transformer case decodes with the VAE of the case its meta.json names under `vae_case`: another folder of the
same set, or itself (self-contained: its VAE weights beside the transformer's, its VAE arguments under
`vae_model`). A recorded output may cover only the first elements of the batch the call ran; its shape says how
many, and those are compared.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from infinity.checkpoints import map_official, official_tokenizer_key
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig

FIXTURES = Path(__file__).parent / "fixtures" / "reference"


@dataclass
class Case:
    folder: Path

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(self.folder / "tensors.safetensors")

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def name(self) -> str:
        return f"{self.folder.parent.name}/{self.folder.name}"

    @property
    def scales(self) -> list[tuple[int, int]]:
        """The transformer's token grids (`scale_schedule`)."""
        return [(h, w) for _, h, w in self.meta["scale_schedule"]]

    @property
    def latent_scales(self) -> list[tuple[int, int]]:
        """The tokenizer's grids (`vae_scale_schedule`; the token grids when the case records none)."""
        return [(h, w) for _, h, w in self.meta.get("vae_scale_schedule", self.meta["scale_schedule"])]

    @property
    def spatial_patch(self) -> int:
        """s: latent cells per token side, read off the two schedules (2 for a case of the 8B layout, where
        `apply_spatial_patchify` is set; 1 otherwise)."""
        ratios = {(H / h, W / w) for (h, w), (H, W) in zip(self.scales, self.latent_scales, strict=True)}
        assert len(ratios) == 1, f"{self.name}: the latent grids are no fixed multiple of the token grids: {ratios}"
        s, s_w = ratios.pop()
        assert s == s_w and s.is_integer(), f"{self.name}: latent grids {s}x{s_w} the token grids"
        assert (s > 1) == bool(self.meta.get("apply_spatial_patchify", 0)), f"{self.name}: apply_spatial_patchify"
        return int(s)

    def spec(self, key: str) -> dict:
        return self.meta["tensors"][key]

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def sibling(self, name: str) -> Case:
        return Case(self.folder.parent / name)

    def vae_case(self) -> Case:
        """The case holding this transformer case's VAE weights (`vae.*`) and arguments: itself when self-contained."""
        name = self.meta["vae_case"]
        return self if name == self.folder.name else self.sibling(name)


def _case_folders(root: Path) -> list[Path]:
    if (root / "meta.json").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/meta.json"))


def discover(kind: str) -> list[Case]:
    roots = [FIXTURES]
    extra = os.environ.get("INFINITY_REFERENCE_DIR")
    if extra:
        roots.append(Path(extra))
    cases = [Case(folder) for root in roots for folder in _case_folders(root)]
    return [c for c in cases if c.kind == kind]


def tokenizer_config(meta: dict) -> TokenizerConfig:
    """Our config for the official AutoEncoder argument namespace recorded in a case: a tokenizer case's `model`,
    or the `vae_model` of a self-contained transformer case."""
    args = meta.get("vae_model", meta["model"])["args_namespace_full"]
    assert args["encoder_ch_mult"] == args["decoder_ch_mult"], "asymmetric encoder/decoder is not a released layout"
    assert args["quantizer_type"] == "MultiScaleBSQ" and args["new_quant"], "only the released BSQ quantizer"
    return TokenizerConfig(
        bits=args["codebook_dim"],
        base_channels=args["base_ch"],
        channel_multipliers=tuple(args["encoder_ch_mult"]),
        num_res_blocks=args["num_res_blocks"],
        patch_size=args["patch_size"],
        quantizer="bsq",
    )


def official_tokenizer(case: Case) -> BitwiseTokenizer:
    """Our tokenizer holding a case's official VAE weights (`vae.*`): a tokenizer case, or a self-contained
    transformer case."""
    tok = BitwiseTokenizer(tokenizer_config(case.meta))
    tok.load_state_dict(map_official(case.weights("vae."), official_tokenizer_key), strict=True)
    return tok.eval()


def self_contained_copy(case: Case, out_dir: Path, first_element_only: tuple[str, ...]) -> Case:
    """The transformer case re-packed as the fixture README's other layout: one folder holding the VAE's weights and
    arguments too, and the outputs named in `first_element_only` recorded for batch element 0 only."""
    vae = case.vae_case()
    folder = out_dir / f"{case.folder.name}_self_contained"
    folder.mkdir(parents=True)
    meta = json.loads(json.dumps(case.meta))
    meta.update(vae_case=folder.name, vae_model=vae.meta["model"])
    tensors = {**case.tensors, **{k: v for k, v in vae.tensors.items() if k.startswith("vae.")}}
    for key in first_element_only:
        tensors[key] = tensors[key][:1].contiguous()
        meta["tensors"][key]["shape"] = list(tensors[key].shape)
        meta["tensors"][key]["desc"] += " (batch element 0 only)"
    (folder / "meta.json").write_text(json.dumps(meta))
    save_file(tensors, folder / "tensors.safetensors")
    return Case(folder)


def image_input(u8: torch.Tensor) -> torch.Tensor:
    x = u8.float() / 255
    return x + x - 1  # exactly as the official transform does it


class Checker:
    """Compares our tensors with a case's recorded ones and remembers which keys were checked."""

    def __init__(self, case: Case):
        self.case = case
        self.checked: set[str] = set()
        self.errors: list[str] = []
        self.report: dict[str, float] = {}

    def __call__(self, key: str, ours: torch.Tensor) -> None:
        spec, ref = self.case.spec(key), self.case.tensors[key]
        self.checked.add(key)
        ours = ours.detach()
        if ours.ndim == ref.ndim and ours.shape[1:] == ref.shape[1:] and 0 < ref.shape[0] < ours.shape[0]:
            ours = ours[: ref.shape[0]]  # recorded for the first elements of the batch only
        if tuple(ours.shape) != tuple(ref.shape):
            ours = ours.reshape(ref.shape) if ours.numel() == ref.numel() else ours
        if tuple(ours.shape) != tuple(ref.shape):
            self.errors.append(f"{key}: shape {tuple(ours.shape)} vs recorded {tuple(ref.shape)}")
            return
        compare = spec["compare"]
        if compare.startswith("exact"):
            diff = (ours.long() != ref.long()).sum().item()
            self.report[key] = diff
            if diff:
                self.errors.append(f"{key}: {diff} of {ref.numel()} entries differ (exact compare)")
        elif compare == "allclose":
            err = (ours.double() - ref.double()).abs()
            bound = spec["atol"] + spec["rtol"] * ref.double().abs()
            self.report[key] = err.max().item()
            if (err > bound).any():
                self.errors.append(f"{key}: max |diff| {err.max().item():.3g} > atol {spec['atol']:.3g} (+rtol)")
        else:
            raise AssertionError(f"{key}: compare mode {compare!r} is not a checkable mode")

    def uncovered(self, skip: str = r"$^") -> list[str]:
        """Recorded outputs that were neither checked nor deliberately skipped."""
        return [
            k
            for k, spec in self.case.meta["tensors"].items()
            if spec["compare"] in ("exact", "allclose") and k not in self.checked and not re.match(skip, k)
        ]

    def assert_ok(self) -> None:
        assert not self.errors, f"{self.case.name}: " + "; ".join(self.errors)
