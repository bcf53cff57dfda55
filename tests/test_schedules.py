import json

import pytest

from infinity.schedules import (
    ASPECT_RATIOS,
    BUDGETS,
    H_DIV_W_TEMPLATES,
    OFFICIAL_T,
    Schedule,
    get_schedule,
    largest_grid,
    nearest_schedule,
    nearest_template,
    parse_aspect_ratio,
    shapes_schedules,
)
from reference_cases import FIXTURES

OFFICIAL = json.loads((FIXTURES / "schedules.json").read_text())


def test_parity_every_official_template_and_budget():
    assert [float(t) for t in OFFICIAL["templates"]] == list(H_DIV_W_TEMPLATES)
    assert OFFICIAL["h_div_w_templates"] == list(H_DIV_W_TEMPLATES)
    for key, budgets in OFFICIAL["templates"].items():
        assert set(budgets) == set(BUDGETS)
        for budget, ref in budgets.items():
            s = get_schedule(float(key), budget)
            assert s.h_div_w == float(key) and s.budget == budget
            assert [list(x) for x in s.thw()] == ref["scales_inference_1hw"]
            assert [[t, h, w] for t, (h, w) in zip(OFFICIAL_T, s.scales)] == ref["scales_thw"]
            assert list(s.pixel_hw) == ref["pixel_hw"]
            assert s.seq_len == ref["seq_len"]


@pytest.mark.parametrize(
    "name, template",
    [("1:1", 1.0), ("4:3", 0.75), ("3:4", 1.333), ("16:9", 0.571), ("9:16", 1.75), ("2:1", 0.5), ("1:2", 2.0),
     ("21:9", 0.4), ("3:2", 0.666), (" 16 x 9 ", 0.571), ("1.5:1", 0.666)],
)
def test_lookup_by_name_takes_nearest_template(name, template):
    assert get_schedule(name, "0.06M").h_div_w == template


def test_lookup_by_height_over_width():
    assert get_schedule(1.0).pixel_hw == (1024, 1024)
    assert get_schedule(0.56, "1M").pixel_hw == (768, 1344)  # landscape: wider than high
    assert nearest_template(1.1) == 1.0 and nearest_template(1.2) == 1.25
    assert get_schedule(720 / 1280, "0.06M").latent_hw == (12, 21)


def test_every_template_has_a_name():
    assert sorted(ASPECT_RATIOS.values()) == sorted(H_DIV_W_TEMPLATES)
    for name, template in ASPECT_RATIOS.items():
        assert nearest_template(parse_aspect_ratio(name)) == template


def test_largest_grid_is_the_1m_last_scale():
    assert largest_grid(1.0) == (64, 64)
    assert largest_grid(0.75) == (54, 72)
    assert largest_grid(get_schedule("16:9", "0.06M").h_div_w) == (48, 84)


@pytest.mark.parametrize("bad", ["wide", "0:1", "16:", "", -1.0, 0, float("nan"), None, True])
def test_bad_aspect_ratio_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="aspect ratio|height/width"):
        get_schedule(bad)


def test_bad_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="0.06M"):
        get_schedule("1:1", "2M")


def test_custom_schedule_for_small_models():
    s = Schedule(scales=[(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)], patch_size=8)
    assert s.pixel_hw == (128, 128) and s.num_scales == 5 and s.seq_len == 1 + 4 + 16 + 64 + 256
    assert s.scales[0] == (1, 1) and isinstance(s.scales, tuple)
    with pytest.raises(ValueError, match="last scale"):
        Schedule(scales=[(4, 4), (2, 2)])
    with pytest.raises(ValueError, match="positive"):
        Schedule(scales=[(0, 1), (2, 2)])
    with pytest.raises(ValueError, match="at least one"):
        Schedule(scales=[])


def test_nearest_schedule_is_the_shared_resize_rule():
    schedules = shapes_schedules(8)  # 128x128, 128x192 (3:2), 192x128 (2:3)
    assert nearest_schedule(schedules, 1.0) == "1:1"
    assert nearest_schedule(schedules, 0.5) == "3:2"  # a wide image
    assert nearest_schedule(schedules, 1.9) == "2:3"  # a tall one
    with pytest.raises(ValueError, match="positive"):
        nearest_schedule(schedules, 0.0)
    with pytest.raises(ValueError, match="at least one schedule"):
        nearest_schedule({}, 1.0)
