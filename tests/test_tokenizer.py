"""Behaviour of the tokenizer and quantizers on tiny random models."""
import pytest
import torch

from infinity.schedules import Schedule
from infinity.tokenizer import BitQuantizer, BitwiseTokenizer, MultiScaleQuantizer, SelfCorrection, TokenizerConfig

TINY = TokenizerConfig(bits=8, base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, patch_size=4)
SCHEDULE = Schedule(scales=[(1, 1), (2, 3), (3, 4), (6, 8)], patch_size=4)  # non-square, non-divisible grids


def _features(B=2, d=8, H=6, W=8, seed=0):
    return torch.randn(B, d, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["bsq", "lfq"])
def test_bits_codes_bits_round_trip(kind):
    q = BitQuantizer(8, kind)
    bits = torch.randint(0, 2, (3, 4, 5, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    codes = q.bits_to_codes(bits)
    assert codes.shape == (3, 8, 4, 5)
    code_again, bits_again = q(codes)
    assert torch.equal(bits_again, bits)
    assert torch.allclose(code_again, codes)
    norms = codes.norm(dim=1)
    expected = 1.0 if kind == "bsq" else 8**0.5
    assert torch.allclose(norms, torch.full_like(norms, expected))


def test_bsq_and_lfq_give_the_same_bits_but_different_codes():
    z = _features()
    (c_bsq, b_bsq), (c_lfq, b_lfq) = BitQuantizer(8, "bsq")(z), BitQuantizer(8, "lfq")(z)
    assert torch.equal(b_bsq, b_lfq)
    assert torch.allclose(c_lfq, c_bsq * 8**0.5)


def test_zero_component_gives_bit_zero():
    z = torch.tensor([[0.0, 1.0, -1.0, 0.0]]).view(1, 4, 1, 1)
    assert BitQuantizer(4)(z)[1].flatten().tolist() == [0, 1, 0, 0]


def test_final_cumulative_features_equal_quantized_and_codes_from_bits():
    f = _features()
    codes = MultiScaleQuantizer(8)(f, SCHEDULE.scales)
    assert len(codes.bits) == len(codes.cumulative) == SCHEDULE.num_scales
    assert [tuple(b.shape[1:3]) for b in codes.bits] == list(SCHEDULE.scales)
    assert torch.equal(codes.cumulative[-1], codes.quantized)
    again = MultiScaleQuantizer(8).codes_from_bits(codes.bits, SCHEDULE.latent_hw)
    for a, b in zip(again, codes.cumulative):
        assert torch.allclose(a, b, atol=1e-6)


def test_more_scales_approach_the_features():
    f = _features(B=4, d=16, H=16, W=16)
    scales = [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (16, 16), (16, 16)]
    codes = MultiScaleQuantizer(16)(f, scales)
    errors = [(f - F).pow(2).mean().item() for F in codes.cumulative]
    assert errors[-1] < 0.5 * errors[0]
    assert all(later <= earlier * 1.05 for earlier, later in zip(errors, errors[1:]))


def test_teacher_forcing_inputs_and_targets_layout():
    codes = MultiScaleQuantizer(8)(_features(), SCHEDULE.scales)
    x = codes.teacher_forcing_inputs()
    assert x.shape == (2, SCHEDULE.seq_len - 1, 8)
    # The input of scale 2 is F_1 resized to scale 2's grid: scale 1 is 1x1, so it is constant there.
    first = x[:, : 2 * 3]
    assert torch.allclose(first, first[:, :1].expand_as(first))
    assert codes.targets().shape == (2, SCHEDULE.seq_len, 8)
    assert torch.equal(codes.targets()[:, 1:7].view(2, 2, 3, 8), codes.bits[1])


def test_self_correction_with_ratio_zero_equals_plain_encoding():
    f = _features()
    plain = MultiScaleQuantizer(8)(f, SCHEDULE.scales)
    flips = SelfCorrection(num_scales=4, strength=0.0).flips(torch.Generator().manual_seed(0))
    noisy = MultiScaleQuantizer(8)(f, SCHEDULE.scales, flips=flips)
    assert all(torch.equal(a, b) for a, b in zip(plain.bits, noisy.bits))
    assert torch.equal(plain.teacher_forcing_inputs(), noisy.teacher_forcing_inputs())


def test_self_correction_flips_early_scales_and_later_targets_correct_them():
    f = _features(B=4, d=8, H=6, W=8)
    q = MultiScaleQuantizer(8)
    plain = q(f, SCHEDULE.scales)
    always = lambda k, bits: torch.ones_like(bits, dtype=torch.bool) if k == 1 else None  # noqa: E731
    noisy = q(f, SCHEDULE.scales, flips=always)
    assert torch.equal(noisy.bits[1], plain.bits[1])  # a corrupted scale keeps its clean target
    assert torch.equal(noisy.used_bits[1], 1 - plain.bits[1])
    assert torch.equal(noisy.bits[0], plain.bits[0])
    assert not torch.equal(noisy.bits[2], plain.bits[2])  # later residuals see the corrupted history
    # Re-quantization pulls the final features back toward f compared with keeping the later clean bits.
    requant = noisy.cumulative[-1]
    no_requant = q.codes_from_bits([plain.bits[0], noisy.used_bits[1], *plain.bits[2:]], SCHEDULE.latent_hw)[-1]
    assert (f - requant).pow(2).mean() < (f - no_requant).pow(2).mean()


def test_random_flips_are_seeded_and_respect_num_scales():
    cfg = SelfCorrection(num_scales=2, strength=0.3)
    f = _features()
    a = MultiScaleQuantizer(8)(f, SCHEDULE.scales, flips=cfg.flips(torch.Generator().manual_seed(3)))
    b = MultiScaleQuantizer(8)(f, SCHEDULE.scales, flips=cfg.flips(torch.Generator().manual_seed(3)))
    assert all(torch.equal(x, y) for x, y in zip(a.used_bits, b.used_bits))
    assert all(torch.equal(a.used_bits[k], a.bits[k]) for k in (2, 3))  # scales >= num_scales untouched
    with pytest.raises(ValueError):
        SelfCorrection(strength=1.5)


def test_entropy_penalty_rewards_confident_and_diverse_bits():
    q = BitQuantizer(8)
    diverse = _features(B=8, seed=1) * 10
    collapsed = diverse.abs()  # every token gets the all-ones code
    assert q.losses(diverse)["entropy_penalty"] < q.losses(collapsed)["entropy_penalty"]
    unsure = diverse.clone()
    unsure[:, 0] = 1e4  # after l2-normalisation the other components are ~0: their bits are coin flips
    assert q.losses(diverse)["entropy_penalty"] < q.losses(unsure)["entropy_penalty"]
    lfq = BitQuantizer(8, "lfq")  # LFQ does not normalise: small features are unsure
    assert lfq.losses(diverse)["entropy_penalty"] < lfq.losses(diverse * 1e-4)["entropy_penalty"]


def test_straight_through_gradients_reach_the_features():
    f = _features().requires_grad_(True)
    codes = MultiScaleQuantizer(8)(f, SCHEDULE.scales, with_losses=True)
    loss = codes.quantized.pow(2).sum() + codes.losses["entropy_penalty"] + codes.losses["commitment"]
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_feature_commitment_pulls_large_features_towards_their_quantization():
    quantizer = MultiScaleQuantizer(8)
    f = (_features() * 10).requires_grad_(True)  # far beyond what K unit-norm codes reach
    codes = quantizer(f, SCHEDULE.scales, with_losses=True)
    gap = codes.losses["feature_commitment"]
    assert torch.allclose(gap, (f - codes.quantized).pow(2).mean())
    gap.backward()
    with torch.no_grad():
        smaller = f - 0.1 * f.grad / f.grad.norm() * f.norm()
        assert quantizer(smaller, SCHEDULE.scales, with_losses=True).losses["feature_commitment"] < gap
        assert f.norm() > smaller.norm()


def test_tokenizer_shapes_decode_and_bits_decode_agree():
    torch.manual_seed(0)
    tok = BitwiseTokenizer(TINY).eval()
    img = torch.rand(2, 3, *SCHEDULE.pixel_hw) * 2 - 1
    with torch.no_grad():
        codes = tok.encode_scales(img, SCHEDULE.scales)
        out = tok.decode(codes.quantized)
        assert out.shape == img.shape and out.min() >= -1 and out.max() <= 1
        assert torch.allclose(tok.decode_bits(codes.bits), out, atol=1e-5)
        prefix = tok.cumulative_from_bits(codes.bits[:2], SCHEDULE.latent_hw)
        assert prefix[-1].shape == (2, 8, *SCHEDULE.latent_hw)
        assert torch.allclose(prefix[-1], codes.cumulative[1], atol=1e-6)


def test_tokenizer_rejects_bad_images():
    tok = BitwiseTokenizer(TINY)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tok.encode(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="last scale"):
        tok.quantize(torch.zeros(1, 8, 6, 8), [(1, 1), (3, 3)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patch_size=12), "power of two"),
        (dict(patch_size=32, channel_multipliers=(1, 2)), "power of two"),
        (dict(base_channels=20), "multiple of 32 or 24"),
        (dict(quantizer="vq"), "quantizer"),
        (dict(bits=0), "bits"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    assert TokenizerConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown"):
        TokenizerConfig.from_dict({**TINY.to_dict(), "depth": 3})


def _literal_bsq_penalty(z_Bdhw, inv_temperature=100.0):
    """The BSQ entropy penalty as the paper writes it: per-bit logits 4 s u_j / T, entropies summed over bits."""
    d = z_Bdhw.shape[1]
    u = torch.nn.functional.normalize(z_Bdhw, dim=1)
    p1 = torch.sigmoid(4 * inv_temperature * u / d**0.5)
    h = lambda p: -(p * torch.log(p + 1e-8) + (1 - p) * torch.log(1 - p + 1e-8))  # noqa: E731
    return h(p1).sum(dim=1).mean() - h(p1.mean(dim=(0, 2, 3))).sum()


def test_entropy_penalty_means_the_same_at_every_bit_depth():
    # Gaussian features: after BSQ's normalisation every depth sees statistically the same bits.
    penalties = {d: float(BitQuantizer(d).losses(_features(B=64, d=d, seed=d))["entropy_penalty"]) for d in (8, 16, 32)}
    assert abs(penalties[8] - penalties[32]) < 0.05 * abs(penalties[16])
    # the literal formula drifts with d (the reason for the normalisation) and is ours at d = 16
    literal = {d: float(_literal_bsq_penalty(_features(B=64, d=d, seed=d))) for d in (8, 16, 32)}
    assert abs(literal[8] - literal[32]) > 0.5 * abs(literal[16])
    assert penalties[16] == pytest.approx(literal[16], rel=1e-5)


def test_upsample_equals_a_3x3_conv_of_the_nearest_x2_image():
    """The decoder's upsample runs as four 2x2 convs of the input (one per output phase), never making the x2
    image: it must equal the plain computation (nearest x2, then the 3x3 conv) to fp32 rounding, gradients too."""
    import torch.nn.functional as F

    from infinity.tokenizer.vae import Upsample

    torch.manual_seed(0)
    up = Upsample(8)
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    plain = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    ours = up(x)
    assert ours.shape == (2, 8, 10, 14)
    assert torch.allclose(ours, plain, atol=1e-5, rtol=0)
    grads = [torch.autograd.grad(y.square().sum(), (x, up.conv.weight)) for y in (ours, plain)]
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(*grads))
