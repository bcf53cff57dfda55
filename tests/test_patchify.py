"""Spatial patchify (Infinity-8B: one transformer token = 2x2 latent cells of the 14-bit tokenizer): the official
channel order on hand-made tensors, round trips, teacher forcing, and a tiny patchified model sampling end to end."""
import pytest
import torch

from infinity.sampling import sample_scales
from infinity.schedules import Schedule, get_schedule
from infinity.tokenizer import TOKENIZER_PRESETS, BitwiseTokenizer, TokenizerConfig
from infinity.tokenizer.model import (
    latent_scales,
    patchify,
    patchify_bits,
    spatial_patch,
    unpatchify,
    unpatchify_bits,
)
from infinity.tokenizer.quantizer import bilinear_resize
from infinity.transformer import TRANSFORMER_PRESETS, Infinity, TransformerConfig

TOKENIZER = TokenizerConfig(bits=8, base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, patch_size=4)
PATCHIFIED = TransformerConfig(
    depth=2, width=64, num_heads=4, bits=4 * 8, text_channels=128, text_maxlen=12, drop_path_rate=0.0
)
# Token grids; a token covers 2x2 latent cells of 4 pixels, so 8 pixels.
SCHEDULE = Schedule(scales=((1, 1), (2, 2), (3, 3), (4, 4)), patch_size=8)


# ---- the official channel order ----


def test_patchify_channel_order_is_the_official_pixel_unshuffle():
    """Token channel c*4 + 2i + j holds latent channel c of the 2x2 block's cell (row i, column j)."""
    x = torch.tensor([[[100 * c + 10 * y + x for x in range(4)] for y in range(4)] for c in range(2)]).unsqueeze(0)
    expected = torch.tensor(
        [
            [[0, 2], [20, 22]],  # c=0, i=0, j=0
            [[1, 3], [21, 23]],  # c=0, i=0, j=1
            [[10, 12], [30, 32]],  # c=0, i=1, j=0
            [[11, 13], [31, 33]],  # c=0, i=1, j=1
            [[100, 102], [120, 122]],  # c=1, ...
            [[101, 103], [121, 123]],
            [[110, 112], [130, 132]],
            [[111, 113], [131, 133]],
        ]
    ).unsqueeze(0)
    assert torch.equal(patchify(x, 2), expected)
    assert torch.equal(unpatchify(expected, 2), x)


def test_bits_of_one_token_list_each_latent_bit_over_the_four_cells():
    # One 2x2 patch of 2-bit cells: top-left (1, 0), top-right (0, 0), bottom-left (1, 1), bottom-right (0, 1).
    latent_BHWd = torch.tensor([[[[1, 0], [0, 0]], [[1, 1], [0, 1]]]], dtype=torch.uint8)
    token_Bhwn = torch.tensor([[[[1, 0, 1, 0, 0, 0, 1, 1]]]], dtype=torch.uint8)
    assert torch.equal(patchify_bits(latent_BHWd, 2), token_Bhwn)
    assert torch.equal(unpatchify_bits(token_Bhwn, 2), latent_BHWd)


# ---- round trips and sizes ----


@pytest.mark.parametrize("s", [1, 2, 3])
def test_unpatchify_inverts_patchify(s):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3 * s, 4 * s, generator=g)
    assert patchify(x, s).shape == (2, 5 * s * s, 3, 4)
    assert torch.equal(unpatchify(patchify(x, s), s), x)
    bits = torch.randint(0, 2, (2, 3 * s, 4 * s, 5), dtype=torch.uint8, generator=g)
    assert patchify_bits(bits, s).shape == (2, 3, 4, 5 * s * s)
    assert torch.equal(unpatchify_bits(patchify_bits(bits, s), s), bits)


def test_odd_grid_cannot_be_patchified():
    with pytest.raises(ValueError, match="does not split into 2x2 patches"):
        patchify(torch.zeros(1, 2, 3, 4), 2)


@pytest.mark.parametrize(("token_bits", "latent_bits", "s"), [(32, 32, 1), (56, 14, 2), (32, 8, 2), (72, 8, 3)])
def test_spatial_patch_from_the_bit_counts(token_bits, latent_bits, s):
    assert spatial_patch(token_bits, latent_bits) == s


@pytest.mark.parametrize(("token_bits", "latent_bits"), [(16, 8), (8, 16), (30, 8)])
def test_bit_counts_that_are_no_square_patch_raise(token_bits, latent_bits):
    with pytest.raises(ValueError, match=f"the tokenizer has {latent_bits} bits per token"):
        spatial_patch(token_bits, latent_bits)


def test_the_released_8b_pair_runs_the_tokenizer_at_twice_the_token_grid():
    s = spatial_patch(TRANSFORMER_PRESETS["infinity-8b"].bits, TOKENIZER_PRESETS["infinity-vae-d56-f8"].config.bits)
    schedule = get_schedule("1:1", "1M")
    assert s == 2 and schedule.latent_hw == (64, 64)
    (H, W), = latent_scales([schedule.latent_hw], s)
    p = TOKENIZER_PRESETS["infinity-vae-d56-f8"].config.patch_size
    assert (H, W) == (128, 128) and (H * p, W * p) == schedule.pixel_hw == (1024, 1024)


# ---- next-scale inputs and teacher forcing ----


def test_next_scale_input_resizes_at_the_latent_grid_then_patchifies():
    F_BdHW = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x_Bln = BitwiseTokenizer.next_scale_input(F_BdHW, (3, 2), 2)
    assert x_Bln.shape == (2, 3 * 2, 4 * 3)
    small_Bdhw = bilinear_resize(F_BdHW, (6, 4))
    for t, (y, x) in enumerate((y, x) for y in range(3) for x in range(2)):  # tokens row-major
        block_d22 = small_Bdhw[:, :, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
        assert torch.equal(x_Bln[:, t], block_d22.reshape(2, 12))  # channel-major, then row, then column
    assert torch.equal(BitwiseTokenizer.next_scale_input(F_BdHW, (3, 2)),  # s = 1: resized, flattened row-major
                       bilinear_resize(F_BdHW, (3, 2)).flatten(2).transpose(1, 2))


def test_teacher_forcing_inputs_and_targets_are_patchified_per_scale():
    torch.manual_seed(0)
    tokenizer = BitwiseTokenizer(TOKENIZER).eval()
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = tokenizer.encode_scales(img, latent_scales(SCHEDULE.scales, 2))
    x_BLn = tokenizer.teacher_forcing_inputs(codes, 2)
    y_BLn = tokenizer.targets(codes, 2)
    assert x_BLn.shape == (2, SCHEDULE.seq_len - 1, 32) and y_BLn.shape == (2, SCHEDULE.seq_len, 32)
    start = 0
    for k, (h, w) in enumerate(SCHEDULE.scales):
        assert torch.equal(y_BLn[:, start : start + h * w], patchify_bits(codes.bits[k], 2).flatten(1, 2))
        if k > 0:
            expected = tokenizer.next_scale_input(codes.cumulative[k - 1], (h, w), 2)
            assert torch.equal(x_BLn[:, start - 1 : start - 1 + h * w], expected)
        start += h * w
    # With s = 1 they are the quantizer's own.
    assert torch.equal(tokenizer.teacher_forcing_inputs(codes), codes.teacher_forcing_inputs())
    assert torch.equal(tokenizer.targets(codes), codes.targets())


# ---- a tiny patchified model, end to end ----


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Infinity(PATCHIFIED).eval()
    with torch.no_grad():  # the training init makes every block almost the identity; make them matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokenizer = BitwiseTokenizer(TOKENIZER).eval()
    g = torch.Generator().manual_seed(1)
    lens_B = torch.tensor([3, 7])
    text_BTE = torch.randn(2, 7, PATCHIFIED.text_channels, generator=g)
    text_BTE[torch.arange(7)[None, :] >= lens_B[:, None]] = 0
    return model, tokenizer, text_BTE, lens_B


def run(tiny, **kwargs):
    model, tokenizer, text_BTE, lens_B = tiny
    return list(sample_scales(model, tokenizer, text_BTE, lens_B, SCHEDULE,
                              generator=torch.Generator().manual_seed(0), **kwargs))


def test_patchified_model_samples_an_image_twice_the_token_grid(tiny):
    _, tokenizer, _, _ = tiny
    events = run(tiny, cfg=3.0)
    for e, (h, w) in zip(events, SCHEDULE.scales):
        assert e.spatial_patch == 2
        assert e.bits_Bhwd.shape == e.probs_Bhwd.shape == (2, h, w, 32) and e.logits_BlV.shape == (2, h * w, 64)
        assert e.latent_bits_Bhwd.shape == (2, 2 * h, 2 * w, 8)
        assert e.F_BdHW.shape == (2, 8, 8, 8)  # the tokenizer's grid: twice the last token grid
    image = events[-1].image_B3HW
    H, W = SCHEDULE.latent_hw
    p = TOKENIZER.patch_size
    assert image.shape == (2, 3, 2 * H * p, 2 * W * p) == (2, 3, *SCHEDULE.pixel_hw)
    # F is the tokenizer's own sum of the unpatchified bits.
    latent_bits = [e.latent_bits_Bhwd for e in events]
    assert torch.allclose(events[-1].F_BdHW, tokenizer.cumulative_from_bits(latent_bits)[-1])


@torch.no_grad()
def test_sampling_and_teacher_forcing_feed_the_model_the_same_inputs(tiny):
    """Bits of an encoded image given as the prefix: the sampler's logits equal the training forward's."""
    model, tokenizer, text_BTE, lens_B = tiny
    img = torch.rand(2, 3, *SCHEDULE.pixel_hw, generator=torch.Generator().manual_seed(3)) * 2 - 1
    codes = tokenizer.encode_scales(img, latent_scales(SCHEDULE.scales, 2))
    prefix = [patchify_bits(b, 2) for b in codes.bits]
    events = run(tiny, cfg=1.0, prefix_bits=prefix)
    assert all(torch.equal(e.latent_bits_Bhwd, b) for e, b in zip(events, codes.bits))
    assert torch.allclose(events[-1].F_BdHW, codes.quantized, atol=1e-6)
    logits_BLV = model(text_BTE, lens_B, tokenizer.teacher_forcing_inputs(codes, 2), SCHEDULE)
    torch.testing.assert_close(torch.cat([e.logits_BlV for e in events], dim=1), logits_BLV, atol=1e-5, rtol=1e-5)


def test_prefix_bits_are_per_token(tiny):
    with pytest.raises(ValueError, match=r"prefix_bits\[1\] must be \(B, h, w, d\) = \(2, 2, 2, 32\)"):
        run(tiny, prefix_bits=[torch.zeros(2, 1, 1, 32, dtype=torch.uint8), torch.zeros(2, 4, 4, 8, dtype=torch.uint8)])
