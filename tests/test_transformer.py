"""The Infinity transformer on tiny CPU configs: KV-cached sampling path equals the training forward,
block-causal mask, RoPE positions, text dropping, configs, and the released presets' state-dict layout."""
import json

import pytest
import torch

from infinity.schedules import Schedule, get_schedule
from infinity.transformer import TRANSFORMER_PRESETS, Infinity, TransformerConfig
from infinity.transformer.blocks import block_causal_mask
from infinity.checkpoints import (
    official_blocks_per_chunk,
    official_transformer_key,
    official_transformer_state_dict,
)
from infinity.transformer.rope import grid_positions
from reference_cases import FIXTURES

TINY = TransformerConfig(depth=3, width=64, num_heads=4, bits=8, text_channels=128, text_maxlen=12, drop_path_rate=0.0)


def tiny_model(seed: int = 0) -> Infinity:
    torch.manual_seed(seed)
    model = Infinity(TINY).eval()
    with torch.no_grad():  # the training init makes every block almost the identity; make them matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_inputs(schedule: Schedule, lens=(3, 7), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lens_B = torch.tensor(lens)
    text_BTE = torch.randn(len(lens), max(lens), TINY.text_channels, generator=g)
    text_BTE[torch.arange(max(lens))[None, :] >= lens_B[:, None]] = 0  # padding rows
    x_BLd = torch.randn(len(lens), schedule.seq_len - 1, TINY.bits, generator=g)
    return text_BTE, lens_B, x_BLd


@pytest.mark.parametrize("aspect_ratio", ["1:1", "16:9", "2:3"])
@torch.no_grad()
def test_cached_steps_equal_teacher_forced_forward(aspect_ratio):
    model = tiny_model()
    schedule = get_schedule(aspect_ratio, "0.06M")
    text_BTE, lens_B, x_BLd = tiny_inputs(schedule)
    logits_BLV = model(text_BTE, lens_B, x_BLd, schedule)
    assert logits_BLV.shape == (2, schedule.seq_len, 2 * TINY.bits)

    text = model.encode_text(text_BTE, lens_B)
    cache = model.new_cache(2, schedule)
    start, stepped = 0, []
    for k, (h, w) in enumerate(schedule.scales):
        x_Bld = None if k == 0 else x_BLd[:, start - 1 : start - 1 + h * w]  # x_BLd starts at scale 1
        stepped.append(model.step(k, x_Bld, text, cache, schedule))
        start += h * w
    torch.testing.assert_close(torch.cat(stepped, dim=1), logits_BLV, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_later_scales_do_not_change_earlier_logits():
    model = tiny_model()
    schedule = get_schedule("1:1", "0.06M")
    text_BTE, lens_B, x_BLd = tiny_inputs(schedule)
    start_5 = sum(h * w for h, w in schedule.scales[:5])  # first token of scale 5
    changed = x_BLd.clone()
    changed[:, start_5 + 10 - 1 :] += 1.0  # x_BLd[i] is token i + 1: change scale 5 from its 11th token on
    a, b = model(text_BTE, lens_B, x_BLd, schedule), model(text_BTE, lens_B, changed, schedule)
    torch.testing.assert_close(a[:, :start_5], b[:, :start_5], atol=0, rtol=0)
    assert not torch.allclose(a[:, start_5 : start_5 + 10], b[:, start_5 : start_5 + 10])  # the whole scale sees it


def test_block_causal_mask():
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(block_causal_mask([(1, 1), (2, 2), (1, 1)]), expected)
    mask = block_causal_mask(get_schedule("4:3", "0.06M").scales)
    assert mask.diagonal().all() and mask[:, 0].all() and not mask.triu(1)[0].any()


def test_rope_positions_stretch_onto_the_largest_grid():
    rows, cols = grid_positions(6, 6, (64, 64))
    assert rows.view(6, 6)[:, 0].tolist() == [0, 11, 21, 32, 43, 53]
    assert torch.equal(cols.view(6, 6)[0], rows.view(6, 6)[:, 0])
    rows, cols = grid_positions(2, 3, (45, 90))
    assert rows.tolist() == [0, 0, 0, 22, 22, 22]  # 22.5 rounds half to even
    assert cols.tolist() == [0, 30, 60] * 2


@torch.no_grad()
def test_dropped_text_is_the_learned_empty_prompt():
    model = tiny_model()
    schedule = get_schedule("1:1", "0.06M")
    text_BTE, lens_B, x_BLd = tiny_inputs(schedule)
    drop_B = torch.tensor([True, False])
    dropped = model(text_BTE, lens_B, x_BLd, schedule, drop_text_B=drop_B)
    by_hand = text_BTE.clone()
    by_hand[0] = model.null_text(lens_B, text_BTE.shape[1])[0]
    torch.testing.assert_close(dropped, model(by_hand, lens_B, x_BLd, schedule))
    torch.testing.assert_close(dropped[1], model(text_BTE, lens_B, x_BLd, schedule)[1])


@torch.no_grad()
def test_padding_does_not_leak_into_a_prompt():
    model = tiny_model()
    schedule = get_schedule("1:1", "0.06M")
    text_BTE, lens_B, x_BLd = tiny_inputs(schedule)
    longer = torch.cat([text_BTE, torch.randn(2, 4, TINY.text_channels)], dim=1)
    torch.testing.assert_close(model(longer, lens_B, x_BLd, schedule), model(text_BTE, lens_B, x_BLd, schedule))


def test_step_rejects_scales_out_of_order():
    model = tiny_model()
    schedule = get_schedule("1:1", "0.06M")
    text_BTE, lens_B, _ = tiny_inputs(schedule)
    text = model.encode_text(text_BTE, lens_B)
    cache = model.new_cache(2, schedule)
    with pytest.raises(ValueError, match="starts at token"):
        model.step(1, torch.zeros(2, 4, TINY.bits), text, cache, schedule)
    with pytest.raises(ValueError, match="SOS"):
        model.step(0, torch.zeros(2, 1, TINY.bits), text, cache, schedule)


def test_bad_inputs_are_rejected():
    model = tiny_model()
    schedule = get_schedule("1:1", "0.06M")
    text_BTE, lens_B, x_BLd = tiny_inputs(schedule)
    with pytest.raises(ValueError, match="x_BLd"):
        model(text_BTE, lens_B, x_BLd[:, 1:], schedule)
    with pytest.raises(ValueError, match="text_lens"):
        model(text_BTE, torch.tensor([0, 7]), x_BLd, schedule)
    with pytest.raises(ValueError, match="head"):
        TransformerConfig(width=64, num_heads=3)


def test_config_round_trips_through_json():
    for config in [TINY, *TRANSFORMER_PRESETS.values()]:
        assert TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        TransformerConfig.from_dict({**TINY.to_dict(), "cos_attn": True})


def test_official_key_mapping():
    assert official_transformer_key("block_chunks.2.module.3.sa.mat_qkv.weight", 4) == "blocks.11.sa.mat_qkv.weight"
    assert official_transformer_key("block_chunks.1.module.0.ca.zero_k_bias", 4) is None
    assert official_transformer_key("text_proj_for_sos.ca.mat_q", 4) == "text_pool.mat_q"
    assert official_transformer_key("head_nm.ada_lin.1.weight", 4) == "head_norm.ada_lin.1.weight"
    assert official_transformer_key("cfg_uncond", 4) == "cfg_uncond"
    assert official_blocks_per_chunk(["block_chunks.0.module.0.ada_gss", "block_chunks.0.module.4.ada_gss"]) == 5


MANIFESTS = {
    "infinity-125m": "infinity_125m.json",
    "infinity-2b": "infinity_2b.json",
    "infinity-8b": "infinity_8b.json",
}


def test_every_preset_has_a_manifest():
    assert set(MANIFESTS) == set(TRANSFORMER_PRESETS)


@pytest.mark.parametrize(("preset", "manifest"), sorted(MANIFESTS.items()))
def test_preset_matches_official_manifest(preset, manifest):
    manifest = json.loads((FIXTURES / "manifests" / manifest).read_text())
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in Infinity(TRANSFORMER_PRESETS[preset]).state_dict().items()}
    official_entries = {e["key"]: e["shape"] for e in manifest["state_dict"] if not e["key"].startswith("vae.")}
    official = {k: tuple(v) for k, v in official_transformer_state_dict(official_entries).items()}
    assert len(official) + sum(k.endswith("zero_k_bias") for k in official_entries) == len(official_entries)
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: (ours[k], official[k]) for k in ours if ours[k] != official[k]} == {}
    values = sum(torch.Size(s).numel() for s in ours.values())
    total = sum(torch.Size(s).numel() for s in official_entries.values())
    zero_k = sum(torch.Size(s).numel() for k, s in official_entries.items() if k.endswith("zero_k_bias"))
    assert values == total - zero_k  # every official value but the all-zero k biases, which we do not keep
    # num_params counts the parameters (2B, 8B) or, built on CPU, every entry with the buffers (125M)
    assert manifest["num_params"] == (total if preset == "infinity-125m" else values)
