"""The self-correction recovery measure: true bits up to scale k, a fraction p of scale k flipped, the rest sampled."""
import json

import pytest
import torch

from infinity.data.shapes import held_out_scenes
from infinity.eval.recovery import encode_scenes, intervene, recovery_curve
from infinity.sampling import Intervention, sample_scales
from infinity.tokenizer.model import unpatchify_bits


@pytest.fixture(scope="module")
def scenes():
    return held_out_scenes(1, 2) + held_out_scenes(2, 1)


def test_recovery_points_are_paired_and_their_references_measure_the_flips(app_pipe, scenes, one_thread):
    points = recovery_curve(app_pipe, scenes, [1, 2], [0.0, 0.3, 1.0], seed=3, batch_size=2)
    assert [(p.k, p.p) for p in points] == [(k, p) for k in (1, 2) for p in (0.0, 0.3, 1.0)]
    by = {(p.k, p.p): p for p in points}
    for k in (1, 2):
        assert by[k, 0.0].reference_psnr_db > 100  # nothing flipped: the reference is the clean reconstruction
        assert by[k, 1.0].reference_psnr_db < by[k, 0.3].reference_psnr_db < 100  # more flips, more damage
    assert points == recovery_curve(app_pipe, scenes, [1, 2], [0.0, 0.3, 1.0], seed=3, batch_size=2)  # repeatable
    other = recovery_curve(app_pipe, scenes, [2], [0.3], seed=4, batch_size=2)[0]
    assert other.psnr_db != by[2, 0.3].psnr_db  # the seed fixes the sampling and the flipped positions


def test_recovery_refuses_scales_with_nothing_left_to_sample(app_pipe, scenes):
    K = app_pipe.schedule("1:1").num_scales
    with pytest.raises(ValueError, match="1..3"):
        recovery_curve(app_pipe, scenes, [K], [0.1])
    with pytest.raises(ValueError, match="fractions"):
        recovery_curve(app_pipe, scenes, [1], [1.5])


def test_recovery_command_writes_a_table_and_json(app_model_dir, tmp_path, capsys):
    from infinity.eval.__main__ import main

    out = tmp_path / "recovery.json"
    assert main(["recovery", "--weights", str(app_model_dir), "--scales", "2", "--fractions", "0", "0.5",
                 "--count", "1", "1", "0", "--json", str(out)]) == 0
    assert "no-correction PSNR" in capsys.readouterr().out
    assert [(p["k"], p["p"], p["scenes"]) for p in json.loads(out.read_text())] == [(2, 0.0, 2), (2, 0.5, 2)]


def test_the_no_correction_reference_flips_exactly_the_bits_the_sampler_flipped(app_pipe, scenes, one_thread):
    encoded = encode_scenes(app_pipe, scenes)
    k, p, seed = 2, 0.3, 5
    _, reference_B3HW = intervene(app_pipe, encoded, k, p, seed=seed)
    # The sampler's scale k, recorded on its own run with the same prefix and intervention.
    events = sample_scales(app_pipe.transformer, app_pipe.tokenizer, encoded.text_BTE, encoded.lens_B,
                           app_pipe.schedule("1:1"), cfg=1.0, tau=1.0, generator=torch.Generator().manual_seed(seed),
                           prefix_bits=encoded.true_bits[:k], intervention=Intervention(k - 1, p, seed))
    sampled_k = next(e.bits_Bhwd for e in events if e.scale_index == k - 1)
    true_k = encoded.true_bits[k - 1]
    assert int((sampled_k != true_k).sum()) == round(p * true_k.numel())  # exactly the share asked for
    bits = [*encoded.true_bits[:k - 1], sampled_k, *encoded.true_bits[k:]]
    expected_B3HW = app_pipe.tokenizer.decode_bits([unpatchify_bits(b, app_pipe.spatial_patch) for b in bits])
    assert torch.equal(reference_B3HW, expected_B3HW)
