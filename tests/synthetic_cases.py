"""A transformer case of the spatial patchify layout (Infinity-8B's) written by OUR code, for the harness.

No public fixture of that layout exists (hidden ones do: `INFINITY_REFERENCE_DIR`). This writes one in the format
the fixture README describes, so the harness's handling of the layout is exercised on every run: two schedules in
the meta (`scale_schedule`, token grids; `vae_scale_schedule`, twice as large), teacher bits in the tokenizer's
layout (B, 1, 2h, 2w, d), targets in the transformer's (B, h*w, 4d) with channel c*4 + dy*2 + dx, logits per
token (V = 2*4d), official key names, self-contained (its VAE beside the transformer). The layouts are built here
with torch's own pixel_unshuffle, not with the helpers under test; the values are ours, so this checks the
plumbing, not agreement with the official code.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from infinity.sampling import sample_scales
from infinity.schedules import Schedule
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig
from reference_cases import Case

D, S = 4, 2  # tokenizer bits per latent cell; latent cells per token side
TOKENIZER = TokenizerConfig(bits=D, base_channels=32, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, patch_size=8)
TRANSFORMER = TransformerConfig(depth=2, width=64, num_heads=4, bits=S * S * D, text_channels=256, text_maxlen=16,
                                mlp_ratio=4.0, drop_path_rate=0.1)
TOKEN_GRIDS = [(1, 1), (2, 2), (3, 3), (4, 4)]
CFG, TAU, TOP_K, TOP_P, G_SEED = 3.0, 0.5, 900, 0.97, 7
_RENAMES = (("text_pool.", "text_proj_for_sos.ca."), ("text_proj.", "text_proj_for_ca."), ("head_norm.", "head_nm."))


def _official_key(ours: str) -> str:
    """Our transformer key -> the official one (one block per chunk)."""
    key = re.sub(r"^blocks\.(\d+)\.", r"block_chunks.\1.module.0.", ours)
    for mine, theirs in _RENAMES:
        if key.startswith(mine):
            key = theirs + key[len(mine):]
    return key


def _tokens(bits_B1HWd: torch.Tensor) -> torch.Tensor:
    """Tokenizer-layout bits (B, 1, 2h, 2w, d) -> transformer tokens (B, h*w, 4d), channel c*4 + dy*2 + dx."""
    x_BdHW = bits_B1HWd.squeeze(1).permute(0, 3, 1, 2)
    return F.pixel_unshuffle(x_BdHW, S).flatten(2).transpose(1, 2)


def _spec(t: torch.Tensor, compare: str, desc: str) -> dict:
    spec = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "desc": desc, "compare": compare}
    if compare == "allclose":
        spec.update(atol=1e-5 * max(1.0, t.abs().max().item()), rtol=1e-5)
    return spec


@torch.no_grad()
def write_patchify_case(out_dir: Path) -> Case:
    torch.manual_seed(0)
    tokenizer, model = BitwiseTokenizer(TOKENIZER).eval(), Infinity(TRANSFORMER).eval()
    for p in model.parameters():  # the training init makes blocks almost the identity; make them matter
        p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([5, 9])
    B, T = len(lens), int(lens.max())
    text_BTE = torch.randn(B, T, TRANSFORMER.text_channels, generator=g)
    text_BTE[torch.arange(T)[None] >= lens[:, None]] = 0
    latent_grids = [(S * h, S * w) for h, w in TOKEN_GRIDS]
    raw_features = torch.randn(B, D, *latent_grids[-1], generator=g)

    tensors: dict[str, torch.Tensor] = {f"model.{_official_key(k)}": v for k, v in model.state_dict().items()}
    tensors.update({f"vae.{k}": v for k, v in tokenizer.state_dict().items()})
    specs = {k: {"shape": list(v.shape), "compare": "load (weights)", "desc": "weights"} for k, v in tensors.items()}

    def record(key: str, value: torch.Tensor, compare: str, desc: str) -> None:
        tensors[key] = value.clone().contiguous()
        specs[key] = _spec(value, compare, desc)

    cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    record("text_kv_compact", torch.cat([text_BTE[i, : lens[i]] for i in range(B)]), "input", "packed prompts")
    record("text_lens", lens, "input", "prompt lengths")
    record("text_cu_seqlens_k", cu, "input", "prompt offsets")
    record("text_max_seqlen_k", lens.max().reshape(1), "input", "longest prompt")
    record("raw_features", raw_features, "input", "encoder output (B, d, 2H, 2W)")

    codes = tokenizer.quantize(raw_features, latent_grids)
    for k, bits in enumerate(codes.bits):
        record(f"gt_bits_s{k}", bits.unsqueeze(1), "exact", "teacher bits, tokenizer layout (B, 1, 2h, 2w, d)")
        record(f"gt_idx_Bl_s{k}", _tokens(tensors[f"gt_bits_s{k}"]), "exact", "targets, transformer layout")
    x_BLC = torch.cat([F.pixel_unshuffle(x.transpose(1, 2).reshape(B, D, *grid), S).flatten(2).transpose(1, 2)
                       for x, grid in zip(codes.next_inputs, latent_grids[1:])], dim=1)
    record("x_BLC_wo_prefix", x_BLC, "allclose", "teacher-forcing input (B, L - 1, 4d)")

    schedule = Schedule(scales=TOKEN_GRIDS, patch_size=TOKENIZER.patch_size * S)
    record("fwd_logits", model(text_BTE, lens, x_BLC, schedule), "allclose", "training forward (B, L, 2*4d)")
    cond_BD = model.encode_text(text_BTE, lens).cond_BD
    record("fwd_cond_BD", cond_BD, "allclose", "pooled text")
    record("fwd_cond_gss", model.shared_adaln(cond_BD), "allclose", "shared AdaLN")

    doubled = torch.cat([text_BTE, model.null_text(lens, T)])
    text = model.encode_text(doubled, torch.cat([lens, lens]))
    record("infer_cond_BD", text.cond_BD, "allclose", "pooled text, CFG-doubled batch")
    teacher = [_tokens(tensors[f"gt_bits_s{k}"]).reshape(B, h, w, -1)
               for k, (h, w) in enumerate(TOKEN_GRIDS)]
    cache = model.new_cache(2 * B, schedule)
    stream = sample_scales(model, tokenizer, text_BTE, lens, schedule, cfg=CFG, tau=TAU, top_k=TOP_K, top_p=TOP_P,
                           generator=torch.Generator().manual_seed(G_SEED), prefix_bits=teacher)
    for event in stream:
        k = event.scale_index
        x_Bld = None if k == 0 else tensors[f"infer_next_input_s{k - 1}"].repeat(2, 1, 1)
        record(f"infer_logits_raw_s{k}", model.step(k, x_Bld, text, cache, schedule), "allclose", "raw logits")
        record(f"infer_logits_cfg_s{k}", event.logits_BlV.reshape(B, -1, 2), "allclose", "guided logits")
        record(f"infer_summed_codes_s{k}", event.F_BdHW.unsqueeze(2), "allclose", "running sum (B, d, 1, 2H, 2W)")
        if not event.is_last:
            h, w = latent_grids[k + 1]
            x_Bdhw = F.interpolate(event.F_BdHW, size=(h, w), mode="bilinear", align_corners=False)
            record(f"infer_next_input_s{k}", F.pixel_unshuffle(x_Bdhw, S).flatten(2).transpose(1, 2), "allclose",
                   "next input (B, h*w, 4d)")
    record("infer_decode_in", event.F_BdHW, "allclose", "decoder input")
    image = ((event.image_B3HW + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))
    record("infer_img_uint8", image, "allclose", "BGR HWC uint8")
    specs["infer_img_uint8"]["atol"] = 1.0  # the official code truncates
    for k in range(len(TOKEN_GRIDS)):  # what the sampler draws at k, given the teacher bits of earlier scales
        draws = sample_scales(model, tokenizer, text_BTE, lens, schedule, cfg=CFG, tau=TAU, top_k=TOP_K, top_p=TOP_P,
                              generator=torch.Generator().manual_seed(G_SEED), prefix_bits=teacher[:k])
        drawn = next(e for e in draws if e.scale_index == k).bits_Bhwd
        draws.close()
        record(f"infer_sampled_seeded_s{k}", drawn.flatten(1, 2), "optional-exact", "seeded draws")

    folder = out_dir / "transformer_patchify_ours"
    folder.mkdir(parents=True)
    kwargs = dict(text_channels=TRANSFORMER.text_channels, text_maxlen=TRANSFORMER.text_maxlen, shared_aln=True,
                  add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1,
                  rope2d_normalized_by_hw=2, apply_spatial_patchify=1, depth=TRANSFORMER.depth,
                  embed_dim=TRANSFORMER.width, num_heads=TRANSFORMER.num_heads, drop_path_rate=0.1, mlp_ratio=4,
                  block_chunks=TRANSFORMER.depth)
    mult = list(TOKENIZER.channel_multipliers)
    vae_args = dict(codebook_dim=D, base_ch=TOKENIZER.base_channels, encoder_ch_mult=mult, decoder_ch_mult=mult,
                    num_res_blocks=TOKENIZER.num_res_blocks, patch_size=TOKENIZER.patch_size,
                    quantizer_type="MultiScaleBSQ", new_quant=True)
    meta = {
        "case": folder.name, "kind": "transformer", "what": "written by our own code (tests/synthetic_cases.py)",
        "model": {"constructor_kwargs": kwargs, "derived": {"d_vae": S * S * D, "V": 2 * S * S * D}},
        "vae_case": folder.name, "vae_model": {"args_namespace_full": vae_args},
        "scale_schedule": [[1, h, w] for h, w in TOKEN_GRIDS],
        "vae_scale_schedule": [[1, h, w] for h, w in latent_grids],
        "apply_spatial_patchify": 1, "h_div_w_template": 1.0, "codebook_dim": D, "batch": B,
        "infer_call": {"cfg_list": [CFG] * len(TOKEN_GRIDS), "tau_list": [TAU] * len(TOKEN_GRIDS),
                       "cfg_insertion_layer": [0], "top_k": TOP_K, "top_p": TOP_P, "g_seed": G_SEED},
        "tensors": specs,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    save_file(tensors, folder / "tensors.safetensors")
    return Case(folder)
