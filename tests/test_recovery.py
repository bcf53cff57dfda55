"""The self-correction recovery measure: true bits up to scale k, a fraction p of scale k flipped, the rest sampled."""
import json

import pytest

from infinity.data.shapes import held_out_scenes
from infinity.eval.recovery import recovery_curve


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
