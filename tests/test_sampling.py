"""The next-scale sampler: parity with the official CFG inference (`pytest -k parity`), and on tiny random models
seeded determinism, prefixes, interventions, guidance, previews, top-k/top-p and argument errors."""
from dataclasses import replace

import pytest
import torch

from infinity.sampling import Intervention, filter_logits, sample_image, sample_scales
from infinity.schedules import Schedule
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig
from infinity.tokenizer.model import patchify_bits
from reference_cases import Case, Checker, discover, official_tokenizer
from test_transformer_parity import load_model, padded_text, schedule_of

TRANSFORMER_CASES = discover("transformer")

TINY_MODEL = TransformerConfig(
    depth=2, width=64, num_heads=4, bits=8, text_channels=128, text_maxlen=12, drop_path_rate=0.0
)
TINY_TOKENIZER = TokenizerConfig(
    bits=8, base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, patch_size=4
)
SCHEDULE = Schedule(scales=((1, 1), (2, 2), (3, 3), (4, 4)), patch_size=4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Infinity(TINY_MODEL).eval()
    with torch.no_grad():  # the training init makes every block almost the identity; make them matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokenizer = BitwiseTokenizer(TINY_TOKENIZER).eval()
    g = torch.Generator().manual_seed(1)
    lens_B = torch.tensor([3, 7])
    text_BTE = torch.randn(2, 7, TINY_MODEL.text_channels, generator=g)
    text_BTE[torch.arange(7)[None, :] >= lens_B[:, None]] = 0
    return model, tokenizer, text_BTE, lens_B


def run(tiny, seed=0, **kwargs):
    model, tokenizer, text_BTE, lens_B = tiny
    kwargs.setdefault("cfg", 3.0)
    return list(sample_scales(model, tokenizer, text_BTE, lens_B, SCHEDULE,
                              generator=torch.Generator().manual_seed(seed), **kwargs))


def bits_of(events):
    return [e.bits_Bhwd for e in events]


def same_bits(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(bits_of(a), bits_of(b), strict=True))


# ---- parity with the official autoregressive_infer_cfg ----


def _official_image(img_B3HW: torch.Tensor) -> torch.Tensor:
    """The official return format: ((x+1)/2)*255 truncated to uint8, HWC, BGR."""
    return ((img_B3HW + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=lambda c: c.name)
@torch.no_grad()
def test_sampler_parity_with_teacher_bits(case: Case):
    t, call, check, s = case.tensors, case.meta["infer_call"], Checker(case), case.spatial_patch
    model, tokenizer, schedule = load_model(case), official_tokenizer(case.vae_case()), schedule_of(case)
    text_BTE, lens_B = padded_text(case)
    K = schedule.num_scales
    # Teacher bits are recorded in the tokenizer's layout (B, 1, s*h, s*w, d); the sampler takes and gives them
    # per transformer token (B, h, w, s*s*d).
    teacher = [patchify_bits(t[f"gt_bits_s{k}"].squeeze(1), s) for k in range(K)]

    def events(prefix):
        return sample_scales(
            model, tokenizer, text_BTE, lens_B, schedule, cfg_schedule=call["cfg_list"][:K], tau=call["tau_list"][:K],
            top_k=call["top_k"], top_p=call["top_p"], generator=torch.Generator().manual_seed(call["g_seed"]),
            prefix_bits=prefix,
        )

    for event in events(teacher):
        k = event.scale_index
        assert torch.equal(event.bits_Bhwd, teacher[k])
        check(f"infer_logits_cfg_s{k}", event.logits_BlV)
        check(f"infer_summed_codes_s{k}", event.F_BdHW.unsqueeze(2))
        if not event.is_last:
            check(f"infer_next_input_s{k}", tokenizer.next_scale_input(event.F_BdHW, schedule.scales[k + 1], s))
    check("infer_decode_in", event.F_BdHW)
    check("infer_img_uint8", _official_image(event.image_B3HW))

    # What the official sampler drew at scale k (then discarded for the teacher bits): the same generator stream,
    # so a run given the teacher bits of scales < k draws the same bits at scale k.
    for k in range(K):
        stream = events(teacher[:k])
        event = next(e for e in stream if e.scale_index == k)
        stream.close()
        drawn = t[f"infer_sampled_seeded_s{k}"]  # "optional-exact": the Checker leaves it to us
        assert torch.equal(event.bits_Bhwd.flatten(1, 2), drawn), f"scale {k}: seeded draws differ"
    check.assert_ok()
    # The rest is covered by the transformer parity tests (raw logits, cond_BD, forward) and the tokenizer's.
    covered_elsewhere = r"model\.|text_|raw_features|x_BLC|gt_bits|gt_idx|fwd_|infer_cond_BD|infer_logits_raw"
    assert not check.uncovered(skip=covered_elsewhere)


# ---- the event stream ----


def test_events_shapes_and_image(tiny):
    events = run(tiny)
    H, W = SCHEDULE.latent_hw
    assert [e.scale_index for e in events] == list(range(SCHEDULE.num_scales))
    for e, (h, w) in zip(events, SCHEDULE.scales):
        assert e.num_scales == SCHEDULE.num_scales
        assert e.bits_Bhwd.dtype == torch.uint8 and e.bits_Bhwd.shape == (2, h, w, 8)
        assert e.probs_Bhwd.shape == (2, h, w, 8) and 0 <= e.probs_Bhwd.min() and e.probs_Bhwd.max() <= 1
        assert e.F_BdHW.shape == (2, 8, H, W) and e.preview_B3HW is None
    assert all(e.image_B3HW is None for e in events[:-1])
    image = events[-1].image_B3HW
    assert image.shape == (2, 3, *SCHEDULE.pixel_hw) and image.abs().max() <= 1
    _, tokenizer, _, _ = tiny
    assert torch.allclose(events[-1].F_BdHW, tokenizer.cumulative_from_bits(bits_of(events))[-1])


def test_previews_have_the_image_shape(tiny):
    events = run(tiny, preview=True)
    assert all(e.preview_B3HW.shape == (2, 3, *SCHEDULE.pixel_hw) for e in events)
    assert torch.equal(events[-1].preview_B3HW, events[-1].image_B3HW)


def test_seeded_determinism(tiny):
    a, b, c = run(tiny, seed=5), run(tiny, seed=5), run(tiny, seed=6)
    assert same_bits(a, b) and torch.equal(a[-1].image_B3HW, b[-1].image_B3HW)
    assert not same_bits(a, c)


def test_prefix_keeps_given_scales_and_samples_the_rest(tiny):
    given = run(tiny, seed=1)
    fresh = run(tiny, seed=2)
    mixed = run(tiny, seed=2, prefix_bits=bits_of(given)[:2])
    assert same_bits(mixed[:2], given[:2])
    assert not same_bits(mixed[2:], given[2:])
    # A prefix taken from a run with the same seed reproduces that run: the generator stream does not depend on it.
    assert same_bits(run(tiny, seed=2, prefix_bits=bits_of(fresh)[:2]), fresh)


def test_intervention_flips_the_fraction_at_one_scale_only(tiny):
    base = run(tiny, seed=3)
    k, fraction = 2, 0.25
    bits = bits_of(base)
    flipped = run(tiny, seed=3, prefix_bits=bits[:k + 1], intervention=Intervention(k, fraction, seed=9))
    assert same_bits(flipped[:k], base[:k])
    changed = (flipped[k].bits_Bhwd != bits[k]).sum().item()
    assert changed == round(fraction * bits[k].numel())
    # Later scales see the flipped scale through their inputs, so their probabilities move.
    assert not torch.allclose(flipped[k + 1].probs_Bhwd, base[k + 1].probs_Bhwd)


def test_cfg_one_is_the_conditional_only_path(tiny):
    """With cfg = 1 the sampler's probabilities are those of the training forward on the prompts alone."""
    model, tokenizer, text_BTE, lens_B = tiny
    events = run(tiny, seed=4, cfg=1.0, tau=0.7)
    codes = tokenizer.cumulative_from_bits(bits_of(events))
    x_BLd = torch.cat([tokenizer.next_scale_input(F, hw) for F, hw in zip(codes, SCHEDULE.scales[1:])], dim=1)
    with torch.no_grad():
        logits_BLV = model(text_BTE, lens_B, x_BLd, SCHEDULE) / 0.7
    probs_BLd = logits_BLV.view(2, SCHEDULE.seq_len, 8, 2).softmax(-1)[..., 1]
    ours_BLd = torch.cat([e.probs_Bhwd.flatten(1, 2) for e in events], dim=1)
    assert torch.allclose(ours_BLd, probs_BLd, atol=1e-5)
    # A negative prompt only matters under guidance.
    negative = torch.randn_like(text_BTE)
    assert same_bits(run(tiny, seed=4, cfg=1.0, tau=0.7, negative_text_BTE=negative, negative_lens_B=lens_B), events)


def test_guidance_combines_tau_scaled_halves(tiny):
    model, tokenizer, text_BTE, lens_B = tiny
    negative = torch.randn(2, 4, TINY_MODEL.text_channels)
    neg_lens = torch.tensor([4, 2])
    events = run(tiny, cfg=2.5, tau=0.5, negative_text_BTE=negative, negative_lens_B=neg_lens)
    codes = tokenizer.cumulative_from_bits(bits_of(events))
    x_BLd = torch.cat([tokenizer.next_scale_input(F, hw) for F, hw in zip(codes, SCHEDULE.scales[1:])], dim=1)
    with torch.no_grad():
        cond = model(text_BTE, lens_B, x_BLd, SCHEDULE) / 0.5
        uncond = model(negative, neg_lens, x_BLd, SCHEDULE) / 0.5
    guided_BLV = 2.5 * cond + (1 - 2.5) * uncond
    assert torch.allclose(torch.cat([e.logits_BlV for e in events], dim=1), guided_BLV, atol=1e-4)
    assert not same_bits(run(tiny, cfg=2.5, tau=0.5), events)  # the learned empty prompt differs


def test_sample_image_returns_the_last_event(tiny):
    model, tokenizer, text_BTE, lens_B = tiny
    last = sample_image(model, tokenizer, text_BTE, lens_B, SCHEDULE, generator=torch.Generator().manual_seed(0))
    assert last.is_last and torch.equal(last.image_B3HW, run(tiny, seed=0)[-1].image_B3HW)


# ---- top-k / top-p on hand-made logits ----


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 5.0]])
    assert torch.equal(filter_logits(logits, top_k=900), logits)  # clamped to the 2 values: a no-op
    # top_k=1 keeps the larger logit; a tie keeps both.
    assert filter_logits(logits, top_k=1).isinf().tolist() == [[False, True], [False, False], [True, False]]
    # p(less likely) = sigmoid(-2) = 0.119, sigmoid(-5) = 0.0067: top_p=0.97 removes only values with p <= 0.03.
    assert filter_logits(logits, top_p=0.97).isinf().tolist() == [[False, False], [False, False], [True, False]]
    assert filter_logits(logits, top_p=0.85).isinf().tolist() == [[False, True], [False, False], [True, False]]
    four = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # probabilities 0.032, 0.087, 0.237, 0.644
    assert filter_logits(four, top_p=0.8).isinf().tolist() == [[True, True, False, False]]


def test_top_p_makes_confident_bits_deterministic(tiny):
    """Bits whose less likely value has probability <= 1 - top_p always take the more likely value."""
    for seed in range(3):
        for e in run(tiny, seed=seed, tau=0.3, top_p=0.9):
            confident = (e.probs_Bhwd - 0.5).abs() >= 0.4
            assert torch.equal(e.bits_Bhwd[confident], (e.probs_Bhwd[confident] > 0.5).to(torch.uint8))


# ---- argument errors ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tau=0.0), "tau must be > 0"),
        (dict(tau=[1.0, 1.0]), "tau needs one value per scale"),
        (dict(cfg_schedule=[3.0]), "cfg_schedule needs one value per scale"),
        (dict(top_p=1.5), "0 <= top_p <= 1"),
        (dict(top_k=-1), "top_k >= 0"),
        (dict(prefix_bits=[torch.zeros(2, 1, 1, 8, dtype=torch.uint8)] * 5), "only 4"),
        (dict(prefix_bits=[torch.zeros(2, 2, 2, 8, dtype=torch.uint8)]), r"prefix_bits\[0\] must be"),
        (dict(prefix_bits=[torch.full((2, 1, 1, 8), 2, dtype=torch.uint8)]), "only 0 and 1"),
        (dict(intervention=Intervention(4, 0.1)), "scale_index must be in"),
        (dict(intervention=Intervention(1, 1.5)), "fraction must be in"),
        (dict(negative_text_BTE=torch.zeros(2, 3, 128)), "needs negative_lens_B"),
        (dict(negative_text_BTE=torch.zeros(1, 3, 128), negative_lens_B=torch.tensor([3])), "need 2 negative prompts"),
    ],
)
def test_bad_arguments_raise(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(tiny, **kwargs)


def test_bad_text_and_tokenizer_raise(tiny):
    model, tokenizer, text_BTE, lens_B = tiny
    with pytest.raises(ValueError, match=r"text must be \(B, T, 128\)"):
        next(sample_scales(model, tokenizer, text_BTE[..., :64], lens_B, SCHEDULE))
    with pytest.raises(ValueError, match="lengths must be"):
        next(sample_scales(model, tokenizer, text_BTE, lens_B[:1], SCHEDULE))
    other = BitwiseTokenizer(replace(TINY_TOKENIZER, bits=16))
    with pytest.raises(ValueError, match="16 bits per token"):
        next(sample_scales(model, other, text_BTE, lens_B, SCHEDULE))


def test_index_head_samples_bits_from_indices():
    from infinity.sampling import sample_index_bits

    logits = torch.full((1, 2, 8), -30.0)
    logits[0, 0, 5] = logits[0, 1, 3] = 30.0  # 5 = 0b101, 3 = 0b011
    bits, probs = sample_index_bits(logits, 3, generator=torch.Generator().manual_seed(0))
    assert bits.tolist() == [[[1, 0, 1], [1, 1, 0]]]
    assert torch.allclose(probs, bits.float(), atol=1e-6)
    uniform_bits, uniform_probs = sample_index_bits(torch.zeros(2, 50, 16), 4)
    assert uniform_bits.shape == (2, 50, 4) and torch.allclose(uniform_probs, torch.full_like(uniform_probs, 0.5))


def test_index_head_model_generates_end_to_end(tiny):
    _, tokenizer, text_BTE, lens_B = tiny
    torch.manual_seed(0)
    model = Infinity(replace(TINY_MODEL, head="index")).eval()
    events = run((model, tokenizer, text_BTE, lens_B))
    assert len(events) == SCHEDULE.num_scales and events[-1].image_B3HW is not None
    assert all(e.bits_Bhwd.shape[-1] == TINY_MODEL.bits for e in events)
