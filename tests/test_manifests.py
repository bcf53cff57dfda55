"""Our configurations of the released tokenizers have exactly the official state-dict keys and shapes."""
import json

import pytest
import torch

from infinity.checkpoints import official_tokenizer_key
from infinity.tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer, TokenizerConfig
from reference_cases import FIXTURES

MANIFESTS = {
    "infinity-vae-d16": "vae_d16.json",
    "infinity-vae-d24": "vae_d24.json",
    "infinity-vae-d32": "vae_d32.json",
    "infinity-vae-d32reg": "vae_d32reg.json",
    "infinity-vae-d64": "vae_d64.json",
    "infinity-vae-d56-f8": "vae_d14_patchify_8b.json",
}


def test_every_preset_has_a_manifest():
    assert set(MANIFESTS) == set(TOKENIZER_PRESETS)


@pytest.mark.parametrize("preset", sorted(MANIFESTS))
def test_preset_matches_official_manifest(preset):
    manifest = json.loads((FIXTURES / "manifests" / MANIFESTS[preset]).read_text())
    config = TOKENIZER_PRESETS[preset].config
    assert config == TokenizerConfig(
        bits=manifest["codebook_dim"],
        base_channels=manifest["base_ch"],
        channel_multipliers=tuple(manifest["encoder_ch_mult"]),
        num_res_blocks=manifest["num_res_blocks"],
        patch_size=manifest["patch_size"],
    )
    assert TOKENIZER_PRESETS[preset].weight_file.split()[0] in manifest["weight_file"]

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in BitwiseTokenizer(config).state_dict().items()}

    official = {}
    for entry in manifest["state_dict"]:
        key = official_tokenizer_key(entry["key"])
        if key is None:  # derived buffer (BSQ's integer-label mask): one entry of shape (d,)
            assert entry["shape"] == [config.bits], entry
            continue
        assert key not in official, f"two official keys map to {key}"
        official[key] = tuple(entry["shape"])

    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    mismatched = {k: (ours[k], official[k]) for k in ours if ours[k] != official[k]}
    assert mismatched == {}
    assert sum(torch.Size(s).numel() for s in ours.values()) == manifest["num_params"]
