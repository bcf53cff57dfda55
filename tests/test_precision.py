"""Precision chosen by capability, and bf16 autocast training with fp32 master weights."""
import pytest
import torch

from infinity.precision import cpu_flags, resolve_precision
from infinity.train.engine import Distributed, OptimConfig
from infinity.train.loop import RunConfig, train
from infinity.train.recipes import RECIPES
from infinity.train.tokenizer_trainer import TokenizerLoss, TokenizerTask

CPU = torch.device("cpu")
TINY = RECIPES["shapes-tiny"]


def test_flags_are_read_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpu_flags(text) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags("no flags here") == frozenset()


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    assert resolve_precision("auto", CPU, frozenset({"avx2", "avx512f"})) == "fp32"
    assert resolve_precision("auto", CPU, frozenset({"avx2", "avx512_bf16"})) == "bf16"
    assert resolve_precision("auto", CPU, frozenset({"amx_bf16"})) == "bf16"
    assert resolve_precision("fp32", CPU, frozenset({"avx512_bf16"})) == "fp32"  # forced
    assert resolve_precision("bf16", CPU, frozenset()) == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError):
        RunConfig(out_dir="x", steps=1, batch_size=1, precision="half")


def test_bf16_training_keeps_fp32_weights_and_follows_fp32(tmp_path):
    cpu = Distributed(0, 1, CPU)
    finals = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        task = TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(), "shapes", 4, 0, OptimConfig())
        run = RunConfig(out_dir=str(tmp_path / precision), steps=4, batch_size=4, progress=False, log_every=1,
                        optim=OptimConfig(warmup_steps=2), precision=precision)
        finals[precision] = train(task, run, cpu)["loss"]
        assert all(p.dtype == torch.float32 for p in task.model.parameters())
    assert finals["bf16"] != finals["fp32"]  # the step really ran in bf16
    assert finals["bf16"] == pytest.approx(finals["fp32"], rel=0.1)
