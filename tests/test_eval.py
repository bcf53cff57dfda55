"""The evaluator's teacher-forced bit errors: per scale, object and background tokens, the guided logits."""
import math

import pytest
import torch

from infinity import InfinityPipeline
from infinity.data.shapes import render
from infinity.eval.__main__ import main
from infinity.eval.shapes import evaluation_scenes, teacher_forced_errors, to_tensor_np
from infinity.tokenizer.model import latent_scales
from tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return InfinityPipeline.from_pretrained(str(write_tiny_model(tmp_path_factory.mktemp("tiny"))), device="cpu")


class Oracle(torch.nn.Module):
    """Logits that pick the ground truth's bits, inverted at the scales in `wrong`; the unconditional call
    (drop_text_B) gets the inverted ones, so guidance must combine both halves to stay right."""

    def __init__(self, real, targets_BLd, bounds, wrong, wrong_objects_BL=None):
        super().__init__()
        self.real, self.targets_BLd, self.bounds, self.wrong = real, targets_BLd, bounds, wrong
        self.wrong_objects_BL = wrong_objects_BL
        self.pos_start, self.config = real.pos_start, real.config
        self.calls = []

    def forward(self, text_BTE, lens_B, x_BLd, schedule, drop_text_B=None):
        self.calls.append(drop_text_B is not None)
        bits_BLd = self.targets_BLd.clone().long()
        for k in self.wrong:
            bits_BLd[:, self.bounds[k]:self.bounds[k + 1]] ^= 1
        if self.wrong_objects_BL is not None:
            bits_BLd ^= self.wrong_objects_BL[..., None].long()
        if drop_text_B is not None:
            bits_BLd ^= 1
        return torch.nn.functional.one_hot(bits_BLd, 2).float().flatten(2)


def _oracle(pipe, scenes, wrong, objects_wrong=False):
    schedule = pipe.schedule("1:1")
    x = torch.cat([to_tensor_np(render(sc, *schedule.pixel_hw)) for sc in scenes])
    codes = pipe.tokenizer.quantize(pipe.tokenizer.encode(x), latent_scales(schedule.scales, 1))
    bounds = [0]
    for h, w in schedule.scales:
        bounds.append(bounds[-1] + h * w)
    # Independently of the evaluator: a token is on an object when a pixel of its cell differs from the background.
    on_object_BL = None
    if objects_wrong:
        differs_B1HW = (x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.1
        H, W = schedule.scales[-1]
        on_last_Bl = torch.nn.functional.adaptive_avg_pool2d(differs_B1HW.float(), (H, W)).flatten(1) > 0.05
        on_object_BL = torch.zeros(len(scenes), bounds[-1], dtype=torch.bool)
        on_object_BL[:, bounds[-2]:] = on_last_Bl
    return Oracle(pipe.transformer, pipe.tokenizer.targets(codes), bounds, wrong, on_object_BL)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_errors_are_counted_per_scale(pipe, monkeypatch, cfg):
    scenes = evaluation_scenes({1: 3, 2: 3})
    oracle = _oracle(pipe, scenes, wrong={1})
    monkeypatch.setattr(pipe, "transformer", oracle)
    rows = teacher_forced_errors(pipe, scenes, cfg=cfg, batch_size=len(scenes))
    assert [r.grid for r in rows] == list(pipe.schedule("1:1").scales)
    for k, r in enumerate(rows):
        expected = 1.0 if k == 1 else 0.0
        assert r.background_bit_error == expected
        assert r.object_bit_error == expected or (r.object_tokens == 0 and math.isnan(r.object_bit_error))
    assert rows[-1].object_tokens > 0  # the finest grid has tokens on the objects
    assert oracle.calls == ([False] if cfg == 1 else [False, True])


def test_object_and_background_tokens_are_told_apart(pipe, monkeypatch):
    scenes = evaluation_scenes({1: 3, 2: 3})
    monkeypatch.setattr(pipe, "transformer", _oracle(pipe, scenes, wrong=set(), objects_wrong=True))
    last = teacher_forced_errors(pipe, scenes, batch_size=len(scenes))[-1]
    assert last.object_tokens > 0 and last.object_bit_error == 1.0 and last.background_bit_error == 0.0


def test_batches_do_not_change_the_counts(pipe):
    scenes = evaluation_scenes({1: 3, 2: 2})
    one, several = (teacher_forced_errors(pipe, scenes, cfg=2.0, batch_size=b) for b in (5, 2))
    for a, b in zip(one, several):
        assert a.grid == b.grid and a.object_tokens == b.object_tokens
        assert a.background_bit_error == pytest.approx(b.background_bit_error, abs=1e-6)


def test_training_split_and_cli_errors(capsys):
    train = evaluation_scenes({1: 2, 2: 2}, split="train")
    assert [len(s.objects) for s in train] == [1, 1, 2, 2] and train == evaluation_scenes({1: 2, 2: 2}, split="train")
    with pytest.raises(ValueError, match="split"):
        evaluation_scenes({1: 1}, split="test")
    assert main(["shapes", "--teacher-forced", "--tokenizer", "x.safetensors"]) == 2
    assert "--teacher-forced scores a pipeline" in capsys.readouterr().err
