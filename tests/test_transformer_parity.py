"""Parity with the official Infinity transformer, on recorded fixtures (`pytest -k parity`).

Every case of kind "transformer" (tests/fixtures/reference and $INFINITY_REFERENCE_DIR) is rebuilt from its
meta.json: configuration, schedule, prompt lengths, CFG settings and tolerances all come from the case.
Three paths are checked: the teacher bits and teacher-forcing inputs that the case's VAE quantizer makes of the
recorded features, the teacher-forced training forward, and the KV-cached scale-by-scale pass with a CFG-doubled
batch fed the recorded next-scale inputs (so the tokenizer is not involved). The sampler's parity (codes, decoded
image) is in test_sampling.py. A case's VAE is another case's or its own (self-contained); both layouts, and
outputs recorded for the first batch element only, are exercised on a re-packed copy of the public case.
"""
from functools import partial

import pytest
import torch

from infinity.schedules import Schedule
from infinity.tokenizer.model import patchify_bits
from infinity.transformer import Infinity, TransformerConfig
from infinity.checkpoints import official_blocks_per_chunk, official_transformer_key
from reference_cases import Case, Checker, discover, official_tokenizer, self_contained_copy

TRANSFORMER_CASES = discover("transformer")


def transformer_config(case: Case) -> TransformerConfig:
    """Our config for the official Infinity constructor arguments recorded in a case."""
    meta, s = case.meta, case.spatial_patch
    kw = meta["model"]["constructor_kwargs"]
    # Flags of the released models that our architecture hard-wires.
    assert kw["shared_aln"] and kw["add_lvl_embeding_only_first_block"] == 1 and kw["use_bit_label"] == 1
    assert kw["rope2d_each_sa_layer"] == 1 and kw["rope2d_normalized_by_hw"] == 2
    assert kw.get("cos_attn", True) and kw.get("head_aln", True) and not kw.get("rms_norm", False)
    # A spatial patchify (the 8B model: s = 2) packs s*s latent cells, so s*s times the tokenizer's bits, in a token.
    bits = meta["codebook_dim"] * s * s
    assert bits == meta["model"].get("derived", {}).get("d_vae", bits)
    return TransformerConfig(
        depth=kw["depth"],
        width=kw["embed_dim"],
        num_heads=kw["num_heads"],
        bits=bits,
        text_channels=kw["text_channels"],
        text_maxlen=kw["text_maxlen"],
        mlp_ratio=kw["mlp_ratio"],
        drop_path_rate=kw["drop_path_rate"],
    )


def load_model(case: Case) -> Infinity:
    official = case.weights("model.")
    key_map = partial(official_transformer_key, blocks_per_chunk=official_blocks_per_chunk(official))
    state_dict = {key_map(k): v for k, v in official.items() if key_map(k) is not None}
    model = Infinity(transformer_config(case))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def padded_text(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's packed prompts (kv_compact + cu_seqlens) as padded (B, T, E) features plus lengths."""
    t = case.tensors
    kv, cu, lens = t["text_kv_compact"], t["text_cu_seqlens_k"], t["text_lens"]
    text_BTE = kv.new_zeros(len(lens), int(lens.max()), kv.shape[1])
    for i in range(len(lens)):
        text_BTE[i, : lens[i]] = kv[cu[i] : cu[i + 1]]
    return text_BTE, lens


def schedule_of(case: Case) -> Schedule:
    return Schedule(scales=case.scales, h_div_w=case.meta["h_div_w_template"])


def test_parity_fixtures_present():
    assert TRANSFORMER_CASES, "no transformer case in tests/fixtures/reference"


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: c.name)
@torch.no_grad()
def test_transformer_forward_parity(case: Case):
    check = Checker(case)
    model = load_model(case)
    text_BTE, lens = padded_text(case)

    check("fwd_logits", model(text_BTE, lens, case.tensors["x_BLC_wo_prefix"], schedule_of(case)))
    cond_BD = model.encode_text(text_BTE, lens).cond_BD
    check("fwd_cond_BD", cond_BD)
    check("fwd_cond_gss", model.shared_adaln(cond_BD))
    check.assert_ok()


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: c.name)
@torch.no_grad()
def test_transformer_cached_cfg_parity(case: Case):
    t, check, call = case.tensors, Checker(case), case.meta["infer_call"]
    assert call["cfg_insertion_layer"] == [0], "only CFG on logits is the released setting"
    model = load_model(case)
    schedule = schedule_of(case)
    text_BTE, lens = padded_text(case)
    B = len(lens)

    # Classifier-free guidance doubles the batch: [prompts; the learned empty prompt of the same lengths].
    doubled_text = torch.cat([text_BTE, model.null_text(lens, text_BTE.shape[1])])
    text = model.encode_text(doubled_text, torch.cat([lens, lens]))
    check("infer_cond_BD", text.cond_BD)

    cache = model.new_cache(2 * B, schedule)
    for k in range(schedule.num_scales):
        x_Bld = None if k == 0 else t[f"infer_next_input_s{k - 1}"].repeat(2, 1, 1)
        raw_BlV = model.step(k, x_Bld, text, cache, schedule)
        check(f"infer_logits_raw_s{k}", raw_BlV)
        cfg, tau = call["cfg_list"][k], call["tau_list"][k]
        scaled_BlV = raw_BlV * (1 / tau)
        guided_BlV = cfg * scaled_BlV[:B] + (1 - cfg) * scaled_BlV[B:]
        check(f"infer_logits_cfg_s{k}", guided_BlV.reshape(B, -1, 2))
    check.assert_ok()


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: c.name)
@torch.no_grad()
def test_transformer_teacher_bits_parity(case: Case):
    """The case's inputs come from its VAE's quantizer: our quantizer makes the same bits and inputs of them.

    The tokenizer quantizes at its own grids; bits are recorded in its layout (B, 1, s*h, s*w, d), targets and
    inputs in the transformer's, (B, h*w, s*s*d) per scale (the same when s = 1)."""
    t, check, s = case.tensors, Checker(case), case.spatial_patch
    tokenizer = official_tokenizer(case.vae_case())
    codes = tokenizer.quantize(t["raw_features"], case.latent_scales)
    for k, bits_BHWd in enumerate(codes.bits):
        check(f"gt_bits_s{k}", bits_BHWd.unsqueeze(1))  # the official layout (B, 1, s*h, s*w, d)
        if f"gt_idx_Bl_s{k}" in case.meta["tensors"]:
            check(f"gt_idx_Bl_s{k}", patchify_bits(bits_BHWd, s).flatten(1, 2))
    check("x_BLC_wo_prefix", tokenizer.teacher_forcing_inputs(codes, s))
    check.assert_ok()


def test_a_self_contained_case_with_outputs_of_the_first_element(tmp_path):
    from test_sampling import test_sampler_parity_with_teacher_bits

    first_only = ("infer_decode_in", "infer_img_uint8")
    case = self_contained_copy(TRANSFORMER_CASES[0], tmp_path, first_element_only=first_only)
    assert case.vae_case() is case and "vae_model" in case.meta
    assert all(case.tensors[k].shape[0] == 1 < case.meta["batch"] for k in first_only)
    for test in (test_transformer_forward_parity, test_transformer_cached_cfg_parity,
                 test_transformer_teacher_bits_parity, test_sampler_parity_with_teacher_bits):
        test(case)


def test_a_case_of_the_spatial_patchify_layout(tmp_path):
    """Infinity-8B's layout (tokenizer grids twice the token grids, bits recorded in the tokenizer's layout, targets
    and logits per token) through every test above. No public fixture of it exists: this case is written by our own
    code (tests/synthetic_cases.py), so it checks the harness's reading of the layout; hidden fixtures check parity."""
    from synthetic_cases import write_patchify_case
    from test_sampling import test_sampler_parity_with_teacher_bits

    case = write_patchify_case(tmp_path)
    assert case.spatial_patch == 2 and case.latent_scales == [(2 * h, 2 * w) for h, w in case.scales]
    assert tuple(case.tensors["gt_bits_s3"].shape) == (2, 1, 8, 8, 4)  # (B, 1, 2h, 2w, d)
    assert tuple(case.tensors["gt_idx_Bl_s3"].shape) == (2, 16, 16)  # (B, h*w, 4d)
    for test in (test_transformer_forward_parity, test_transformer_cached_cfg_parity,
                 test_transformer_teacher_bits_parity, test_sampler_parity_with_teacher_bits):
        test(case)
