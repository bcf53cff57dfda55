"""The trainers: a step lowers the loss, resume is exact, two gloo processes equal one, checkpoints survive kills."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infinity.checkpoints import load_model, save_model
from infinity.data.objects import background_mask, object_token_weights
from infinity.tokenizer import BitwiseTokenizer
from infinity.train.data import make_source
from infinity.train.engine import Distributed, OptimConfig, adamw, load_checkpoint, lr_at
from infinity.train.loop import RunConfig, train
from infinity.train.recipes import RECIPES
from infinity.train.tokenizer_trainer import CaptionSampler, TokenizerLoss, TokenizerTask
from infinity.train.transformer_trainer import (
    GlobalBatchFlips,
    OnPolicyFlips,
    TransformerLoss,
    TransformerTask,
    scale_weights,
)
from infinity.transformer.losses import bitwise_cross_entropy
from infinity.tokenizer import SelfCorrection

TINY = RECIPES["shapes-tiny"]
ROOT = Path(__file__).resolve().parents[1]
CPU = Distributed(0, 1, torch.device("cpu"))


def _tokenizer_task(**kw) -> TokenizerTask:
    loss = TokenizerLoss(object_weight=2.0, color=1.0, feature_commitment=0.25)
    return TokenizerTask(TINY.tokenizer, TINY.schedules, loss, "shapes", 4, 0, OptimConfig(), **kw)


@pytest.fixture(scope="module")
def tiny_tokenizer_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(BitwiseTokenizer(TINY.tokenizer), tmp_path_factory.mktemp("tok") / "tokenizer.safetensors")


def _transformer_task(tokenizer_file: Path, **kw) -> TransformerTask:
    loss = TransformerLoss(scale_weight_power=0.5, self_correction_scales=2, cond_dropout=0.25)
    return TransformerTask(TINY.transformer, load_model(tokenizer_file), str(tokenizer_file), "minilm",
                           TINY.schedules, loss, "shapes", 4, 0, **kw)


def _one_step_lowers_loss(task, step: int = 3) -> tuple[float, float]:
    task.setup(CPU, task.model)
    opt = adamw(task.model, OptimConfig(lr=3e-4, weight_decay=0.0))
    torch.manual_seed(0)
    before, _, _ = task.losses(step, CPU)
    opt.zero_grad()
    before.backward()
    opt.step()
    torch.manual_seed(0)
    after, _, _ = task.losses(step, CPU)
    return float(before.detach()), float(after.detach())


@pytest.mark.parametrize("seed", [0, 1])
def test_tokenizer_step_lowers_loss_on_a_fixed_batch(seed):
    torch.manual_seed(seed)
    before, after = _one_step_lowers_loss(_tokenizer_task())
    assert after < before


def test_decoder_only_keeps_the_bits_and_trains_the_decoder(tmp_path, tiny_tokenizer_file):
    with pytest.raises(ValueError, match="--init-from"):
        _tokenizer_task(decoder_only=True)
    run = RunConfig(out_dir=str(tmp_path), steps=3, batch_size=4, optim=OptimConfig(warmup_steps=1), progress=False)
    train(_tokenizer_task(init_from=str(tiny_tokenizer_file), decoder_only=True), run, CPU)
    before, after = load_model(tiny_tokenizer_file), load_model(tmp_path / "tokenizer.safetensors")
    old, new = before.state_dict(), after.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("encoder."))
    assert not all(torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    scales = TINY.schedules["1:1"].scales
    for a, b in zip(before.encode_scales(img, scales).bits, after.encode_scales(img, scales).bits):
        assert torch.equal(a, b)


def test_transformer_step_lowers_loss_on_a_fixed_batch(tiny_tokenizer_file):
    torch.manual_seed(0)
    before, after = _one_step_lowers_loss(_transformer_task(tiny_tokenizer_file))
    assert after < before


def test_object_token_weights_follow_the_objects():
    from infinity.data.shapes import Scene, ShapeObject, render

    schedule = TINY.schedules["1:1"]  # 32 px, token grids 1, 2, 4, 8
    scene = Scene((ShapeObject("square", "red", "large", "at the top left"),), "gray")
    img = torch.from_numpy(render(scene, 32, 32)).permute(2, 0, 1)[None].float() / 127.5 - 1
    w_BL = object_token_weights(img.repeat(2, 1, 1, 1), schedule, 3.0)
    assert w_BL.shape == (2, schedule.seq_len) and torch.equal(w_BL[0], w_BL[1])
    last = w_BL[0, -64:].view(8, 8)  # the square covers pixels 1 to 9 of the top-left 10.7 px cell
    assert last[0, 0] == 1 + 3 * 9 / 16 and last[1, 1] == 4.0 and (last[3:, :] == 1).all() and (last[:, 3:] == 1).all()
    assert w_BL[0, 0] == pytest.approx(1 + 3 * (last - 1).sum().item() / 3 / 64, rel=1e-5)  # the 1x1 token: the mean cover
    assert object_token_weights(torch.zeros(1, 3, 32, 32), schedule, 3.0).eq(1).all()
    with pytest.raises(ValueError, match="object_weight"):
        TransformerLoss(object_weight=-1)


def test_object_weighted_transformer_step_lowers_loss(tiny_tokenizer_file):
    task = _transformer_task(tiny_tokenizer_file)
    task.loss_cfg = TransformerLoss(scale_weight_power=0.5, object_weight=4.0)
    torch.manual_seed(0)
    before, after = _one_step_lowers_loss(task)
    assert after < before


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_scale_weights_and_bitwise_cross_entropy():
    schedule = TINY.schedules["1:1"]
    w = scale_weights(schedule, 1.0)
    assert w.mean() == pytest.approx(1.0)
    per_scale = [float(w[a:b].sum()) for a, b in zip([0, 1, 5, 21], [1, 5, 21, 85])]
    assert schedule.seq_len == 85 and max(per_scale) == pytest.approx(min(per_scale), rel=1e-5)
    assert scale_weights(schedule, 0.0).eq(1).all()
    targets = torch.randint(0, 2, (2, 85, 8), dtype=torch.uint8)
    confident = torch.stack([-10 * (targets.float() * 2 - 1), 10 * (targets.float() * 2 - 1)], dim=-1).view(2, 85, 16)
    assert float(bitwise_cross_entropy(confident, targets, w)) < 1e-3
    assert float(bitwise_cross_entropy(torch.zeros(2, 85, 16), targets, w)) == pytest.approx(0.6931, abs=1e-3)


def test_global_batch_flips_do_not_depend_on_the_process_count():
    cfg = SelfCorrection(num_scales=1, strength=0.3)
    bits = torch.zeros(4, 3, 3, 8, dtype=torch.uint8)
    whole = GlobalBatchFlips(cfg, torch.Generator().manual_seed(1), 4, slice(0, 4))(0, bits)
    halves = [GlobalBatchFlips(cfg, torch.Generator().manual_seed(1), 4, rows)(0, bits[rows])
              for rows in (slice(0, 2), slice(2, 4))]
    assert torch.equal(whole, torch.cat(halves))
    assert GlobalBatchFlips(cfg, torch.Generator(), 4, slice(0, 4))(1, bits) is None


def test_on_policy_flips_put_the_samples_into_the_chosen_rows(tiny_tokenizer_file):
    tok = load_model(tiny_tokenizer_file)
    scales = TINY.schedules["1:1"].scales
    f = torch.randn(3, tok.bits, *scales[-1], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    sampled = [torch.randint(0, 2, (2, h, w, tok.bits), generator=g, dtype=torch.uint8) for h, w in scales[:2]]
    rows_B = torch.tensor([True, False, True])
    clean = tok.quantize(f, scales)
    codes = tok.quantize(f, scales, flips=OnPolicyFlips(sampled, rows_B, None))
    for k in range(2):
        assert torch.equal(codes.used_bits[k][rows_B], sampled[k])  # the chosen rows take the samples
        assert torch.equal(codes.used_bits[k][1], clean.used_bits[k][1])  # the other row stays clean
    own_F = tok.cumulative_from_bits(sampled, scales[-1])[-1]
    assert torch.allclose(codes.cumulative[1][rows_B], own_F, atol=1e-6)  # inputs are the model's own sum
    assert torch.equal(codes.bits[2][1], clean.bits[2][1])
    assert not torch.equal(codes.bits[2][rows_B], clean.bits[2][rows_B])  # later targets: residuals against them
    random_flips = GlobalBatchFlips(SelfCorrection(2, 1.0), torch.Generator().manual_seed(0), 3, slice(0, 3))
    mixed = tok.quantize(f, scales, flips=OnPolicyFlips(sampled, rows_B, random_flips))
    assert torch.equal(mixed.used_bits[0][rows_B], sampled[0])


def test_on_policy_step_samples_with_the_model_and_lowers_the_loss(tiny_tokenizer_file):
    with pytest.raises(ValueError, match="self_correction_scales"):
        TransformerLoss(on_policy_share=0.5)
    with pytest.raises(ValueError, match="on_policy_given"):
        TransformerLoss(self_correction_scales=2, on_policy_share=0.5, on_policy_given=2)
    loss = TransformerLoss(self_correction_scales=3, self_correction_strength=0.0, on_policy_share=1.0,
                           on_policy_given=1)
    task = TransformerTask(TINY.transformer, load_model(tiny_tokenizer_file), str(tiny_tokenizer_file), "minilm",
                           TINY.schedules, loss, "shapes", 4, 0)
    task.setup(CPU, task.model)
    batch = task.source.batch(3, 4, slice(0, 4))
    schedule = task.schedules[batch.aspect_ratio]
    given = [torch.ones(4, 1, 1, TINY.transformer.bits, dtype=torch.uint8)]
    flips = task._on_policy_flips(3, batch.captions, schedule, 4, slice(0, 4), given, None)
    assert flips.rows_B.all() and len(flips.sampled_bits) == 3 and task.model.training
    assert torch.equal(flips.sampled_bits[0], given[0])  # the given scale is the image's, not a sample
    again = task._on_policy_flips(3, batch.captions, schedule, 4, slice(0, 4), given, None)
    assert all(torch.equal(a, b) for a, b in zip(flips.sampled_bits, again.sampled_bits))  # seeded by the step
    torch.manual_seed(0)
    before, after = _one_step_lowers_loss(task)
    assert after < before


def test_on_policy_sampling_that_fails_leaves_the_model_in_train_mode(tiny_tokenizer_file, monkeypatch):
    from infinity.train import transformer_trainer

    loss = TransformerLoss(self_correction_scales=2, on_policy_share=1.0, on_policy_given=1)
    task = TransformerTask(TINY.transformer, load_model(tiny_tokenizer_file), str(tiny_tokenizer_file), "minilm",
                           TINY.schedules, loss, "shapes", 2, 0)
    task.setup(CPU, task.model)
    batch = task.source.batch(0, 2, slice(0, 2))

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(transformer_trainer, "sample_scales", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        task._on_policy_flips(0, batch.captions, task.schedules[batch.aspect_ratio], 2, slice(0, 2), [], None)
    assert task.model.training


def test_object_count_weights_choose_the_scenes(tmp_path):
    only_one = make_source("shapes", TINY.schedules, 0, object_count_weights=(1.0, 0.0, 0.0)).batch(0, 8, slice(0, 8))
    assert all(" and " not in c and ", a " not in c for c in only_one.captions)
    mixed = make_source("shapes", TINY.schedules, 0).batch(0, 8, slice(0, 8))
    assert any(" and " in c for c in mixed.captions)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("")
    with pytest.raises(ValueError, match="shapes data only"):
        make_source(str(jsonl), TINY.schedules, 0, object_count_weights=(1.0, 1.0, 1.0))


def test_background_mask_marks_objects():
    img = -torch.ones(1, 3, 16, 16)
    img[:, 0, 4:8, 4:8] = 1
    mask = background_mask(img)
    assert mask.sum() == 16 and mask[0, 0, 5, 5]


class _Killed(Exception):
    pass


class _DiesAt:
    """A task that raises at one step, like a process killed mid-run."""

    def __init__(self, task, step):
        self.task, self.step = task, step
        self.model = task.model

    def losses(self, step, dist):
        if step == self.step:
            raise _Killed
        return self.task.losses(step, dist)

    def __getattr__(self, name):
        return getattr(self.task, name)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _straight_and_resumed(make_task, tmp_path, steps: int, dies_at: int):
    """One run straight through (in tmp_path/a), and one killed at step `dies_at` then resumed from its last
    checkpoint in a fresh task (tmp_path/b); both tasks."""
    run = dict(steps=steps, batch_size=4, optim=OptimConfig(warmup_steps=2), checkpoint_every=2, progress=False)
    torch.manual_seed(0)
    straight = make_task()
    train(straight, RunConfig(out_dir=str(tmp_path / "a"), **run), CPU)

    torch.manual_seed(0)
    with pytest.raises(_Killed):
        train(_DiesAt(make_task(), dies_at), RunConfig(out_dir=str(tmp_path / "b"), **run), CPU)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == dies_at // 2 * 2
    torch.manual_seed(123)  # a fresh process: other initial weights, overwritten by the checkpoint
    resumed = make_task()
    train(resumed, RunConfig(out_dir=str(tmp_path / "b"), resume=True, **run), CPU)
    return straight, resumed


def test_resumed_run_ends_in_the_same_state(tmp_path):
    straight, resumed = _straight_and_resumed(_tokenizer_task, tmp_path, steps=6, dies_at=5)

    a, b = _state(straight.model), _state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    exported = load_model(tmp_path / "b" / "tokenizer.safetensors")
    assert all(torch.equal(v, load_model(tmp_path / "a" / "tokenizer.safetensors").state_dict()[k])
               for k, v in exported.state_dict().items())
    assert list((tmp_path / "b" / "samples").glob("tokenizer_*.png"))
    assert '"step": 6' in (tmp_path / "b" / "metrics.jsonl").read_text()


def test_transformer_resumed_with_self_correction_and_on_policy_flips_ends_in_the_same_state(tmp_path, tiny_tokenizer_file):
    loss = TransformerLoss(self_correction_scales=3, self_correction_strength=0.3, cond_dropout=0.25,
                           on_policy_share=0.5, on_policy_given=1)

    def task():
        return TransformerTask(TINY.transformer, load_model(tiny_tokenizer_file), str(tiny_tokenizer_file), "minilm",
                               TINY.schedules, loss, "shapes", 4, 0)

    straight, resumed = _straight_and_resumed(task, tmp_path, steps=4, dies_at=3)
    a, b = _state(straight.model), _state(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _gan_task(**loss) -> TokenizerTask:
    return TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(gan=0.5, **loss), "shapes", 4, 0,
                         OptimConfig(lr=1e-3, weight_decay=0.0))


def test_gan_step_trains_the_discriminator_and_adds_the_generator_term():
    torch.manual_seed(0)
    task = _gan_task()
    task.setup(CPU, task.model)
    torch.manual_seed(0)
    total, metrics, _ = task.losses(3, CPU)
    torch.manual_seed(0)
    _, again, _ = task.losses(3, CPU)  # the same batch, after the discriminator's step on it
    assert again["d_loss"] < metrics["d_loss"]

    before_start = _gan_task(gan_start=100)  # the same weights, before the GAN term starts
    before_start.model.load_state_dict(task.model.state_dict())
    before_start.setup(CPU, before_start.model)
    torch.manual_seed(0)
    plain, plain_metrics, _ = before_start.losses(3, CPU)
    assert "g_loss" not in plain_metrics
    assert float((total - plain).detach()) == pytest.approx(0.5 * metrics["g_loss"], rel=1e-4, abs=1e-6)


class _RecordsDiscriminatorLr:
    def __init__(self, task):
        self.task, self.model, self.lrs = task, task.model, []

    def losses(self, step, dist):
        self.lrs.append(self.task.disc_optimizer.param_groups[0]["lr"])
        return self.task.losses(step, dist)

    def __getattr__(self, name):
        return getattr(self.task, name)


def test_discriminator_follows_the_generators_warmup_and_cosine(tmp_path):
    optim = OptimConfig(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)
    task = _RecordsDiscriminatorLr(TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(gan=0.5), "shapes",
                                                 2, 0, optim))
    train(task, RunConfig(out_dir=str(tmp_path), steps=5, batch_size=2, optim=optim, log_every=1, progress=False), CPU)
    generator = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                 if "loss" in line]
    assert generator == pytest.approx([lr_at(s, 5, optim) for s in range(5)])
    assert task.lrs == pytest.approx(generator)
    assert task.lrs[0] < task.lrs[1] and task.lrs[1] > task.lrs[-1]  # warm-up, then decay


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    run = RunConfig(out_dir=str(tmp_path), steps=1, batch_size=2, progress=False)
    train(_tokenizer_task(), run, CPU)
    other = TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(entropy=0.5), "shapes", 2, 0, OptimConfig())
    with pytest.raises(ValueError, match="another configuration"):
        train(other, RunConfig(out_dir=str(tmp_path), steps=2, batch_size=2, resume=True, progress=False), CPU)


def test_transformer_init_from_official_checkpoint(tmp_path):
    from test_transformer_parity import TRANSFORMER_CASES, transformer_config

    case = TRANSFORMER_CASES[0]
    config = transformer_config(case)
    path = tmp_path / "official.pth"
    torch.save(case.weights("model."), path)  # the released format: a plain state dict of official names
    tok_cfg = TINY.tokenizer.__class__(**{**TINY.tokenizer.to_dict(), "bits": config.bits})
    task = TransformerTask(config, BitwiseTokenizer(tok_cfg), "", "minilm", TINY.schedules, TransformerLoss(),
                           "shapes", 2, 0, init_from=str(path))
    official = case.weights("model.")
    assert torch.equal(task.model.head.weight, official["head.weight"])
    assert torch.equal(task.model.blocks[0].ffn.fc1.weight, official["block_chunks.0.module.0.ffn.fc1.weight"])


def _cli(out: Path, *extra: str) -> list[str]:
    base = ["tokenizer", "--recipe", "shapes-tiny", "--out", str(out), "--warmup-steps", "1", "--no-progress",
            "--threads", "1"]
    return base + list(extra or ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "1"])


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    """A port no other process listens on now (tests of other checkouts may run torchrun at the same time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], processes: int = 1) -> None:
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port", str(_free_port())]
    cmd = [sys.executable, *(launcher if processes > 1 else []), "-m", "infinity.train", *args]
    done = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


def test_two_gloo_processes_equal_one_process(tmp_path):
    # Same global batch, same seed: the loss of every step agrees (parameters are not compared: Adam turns the
    # rounding noise of gradients that are zero in exact arithmetic, e.g. of biases before a GroupNorm, into
    # full-size steps that do not change the function). The entropy penalty's codebook term is a statistic of
    # each process's batch (as in the official trainer), so it is off here.
    tok = ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "2", "--log-every", "1",
           "--entropy-weight", "0", "--crop-size", "16"]
    _run(_cli(tmp_path / "tok1", *tok))
    _run(_cli(tmp_path / "tok2", *tok), processes=2)
    assert len(_losses(tmp_path / "tok1")) == 3
    assert _losses(tmp_path / "tok1") == pytest.approx(_losses(tmp_path / "tok2"), rel=1e-4)
    assert load_checkpoint(tmp_path / "tok2" / "checkpoint.pt")["step"] == 3

    # The transformer with self-correction flips and condition dropout, drawn for the global batch.
    tokenizer = str(tmp_path / "tok1" / "tokenizer.safetensors")
    tr = ["--steps", "3", "--batch-size", "4", "--tokenizer", tokenizer, "--self-correction-scales", "2",
          "--cond-dropout", "0.5", "--warmup-steps", "1", "--log-every", "1", "--no-progress", "--threads", "1"]
    _run(["transformer", "--recipe", "shapes-tiny", "--out", str(tmp_path / "tr1"), *tr])
    _run(["transformer", "--recipe", "shapes-tiny", "--out", str(tmp_path / "tr2"), *tr], processes=2)
    assert _losses(tmp_path / "tr1") == pytest.approx(_losses(tmp_path / "tr2"), rel=1e-4)
    assert len(_losses(tmp_path / "tr1")) == 3


def test_killed_process_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "infinity.train",
                             *_cli(out, "--steps", "1000", "--batch-size", "2", "--checkpoint-every", "1")],
                            env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt.is_file() and load_checkpoint(ckpt)["step"] >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)  # whatever moment the kill hit, the file on disk is a whole checkpoint
    assert state["step"] >= 3
    resumed = subprocess.run([sys.executable, "-m", "infinity.train",
                              *_cli(out, "--steps", str(state["step"] + 1), "--batch-size", "2", "--resume")],
                             env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed" in resumed.stderr


def test_export_writes_a_pipeline_with_per_scale_defaults(tmp_path, tiny_tokenizer_file, capsys):
    from infinity import InfinityPipeline
    from infinity.train.__main__ import main
    from infinity.transformer import Infinity

    transformer = save_model(Infinity(TINY.transformer), tmp_path / "transformer.safetensors")
    args = ["export", "--recipe", "shapes-tiny", "--tokenizer", str(tiny_tokenizer_file),
            "--transformer", str(transformer), "--out", str(tmp_path / "model"), "--example", "a red circle at the top"]
    assert main([*args, "--cfg-schedule", "1", "2", "3", "4", "--tau-schedule", "1", "1", "0.5", "0.5"]) == 0
    pipe = InfinityPipeline.from_pretrained(str(tmp_path / "model"))
    assert pipe.defaults.cfg_schedule == (1, 2, 3, 4) and pipe.defaults.tau_schedule == (1, 1, 0.5, 0.5)
    assert pipe.examples == ("a red circle at the top",)
    assert main([*args, "--cfg-schedule", "1", "2"]) == 2
    assert "cfg_schedule has 2 values" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "infinity.train",
                          *_cli(tmp_path, "--steps", "1", "--data", "nope.jsonl")],
                         env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_index_head_trains_on_the_index_of_the_bits(tiny_tokenizer_file):
    from dataclasses import replace

    from infinity.transformer.losses import bits_to_index, index_cross_entropy, predicted_bits

    bits = torch.tensor([[[1, 0, 1], [0, 1, 1]]])
    assert bits_to_index(bits).tolist() == [[5, 6]]
    logits = torch.full((1, 2, 8), -20.0)
    logits[0, 0, 5] = logits[0, 1, 6] = 20.0
    assert torch.equal(predicted_bits(logits, 3, "index"), bits)
    assert float(index_cross_entropy(logits, bits, torch.ones(2))) < 1e-6

    torch.manual_seed(0)
    task = _transformer_task(tiny_tokenizer_file)
    task.config = replace(task.config, head="index")
    task.model = type(task.model)(task.config)
    assert task.model.head.out_features == 2**8
    before, after = _one_step_lowers_loss(task)
    assert after < before


def test_tokenizer_trains_on_a_jsonl_dataset_skipping_bad_lines(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    lines = []
    for i, (h, w) in enumerate([(64, 64), (40, 60), (64, 64), (80, 120)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append({"image_path": f"{i}.png", "h_div_w": h / w, "text": f"image {i}"})
    lines.append({"image_path": "missing.png", "h_div_w": 1.0, "text": "gone"})
    lines.append({"image_path": "0.png", "h_div_w": 3.0, "text": "no bucket this tall"})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    task = TokenizerTask(TINY.tokenizer, TINY.schedules, TokenizerLoss(), str(tmp_path / "data.jsonl"), 2, 0,
                         OptimConfig())
    assert [line for line, _ in task.source.dataset.skipped] == [5, 6, 7]
    task.setup(CPU, task.model)
    aspects = set()
    for step in range(6):
        loss, metrics, n = task.losses(step, CPU)
        assert torch.isfinite(loss) and n == 2
        aspects.add(task.source.batch(step, 2, slice(0, 2)).aspect_ratio)
    assert aspects == {"1:1", "3:2"}


def test_fsdp_on_two_gloo_processes_equals_one_process(tmp_path, tiny_tokenizer_file):
    # FSDP2 shards the transformer's blocks over two CPU processes; the losses match one unsharded process, and
    # the checkpoint and the exported weights are whole (loadable without any process group).
    tr = ["--recipe", "shapes-tiny", "--steps", "3", "--batch-size", "4", "--tokenizer", str(tiny_tokenizer_file),
          "--warmup-steps", "1", "--log-every", "1", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]
    _run(["transformer", "--out", str(tmp_path / "one"), *tr])
    _run(["transformer", "--out", str(tmp_path / "fsdp"), "--fsdp", *tr], processes=2)
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "fsdp"), rel=1e-4)
    state = load_checkpoint(tmp_path / "fsdp" / "checkpoint.pt")
    assert state["step"] == 3 and state["model"]["head.weight"].shape == (16, 48)
    assert load_model(tmp_path / "fsdp" / "transformer.safetensors").config == TINY.transformer
    _run(["transformer", "--out", str(tmp_path / "fsdp"), "--fsdp", "--resume", *tr[:3], "4", *tr[4:]], processes=2)
    assert load_checkpoint(tmp_path / "fsdp" / "checkpoint.pt")["step"] == 4


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, tiny_tokenizer_file) -> Path:
    """A pipeline folder whose transformer (random weights) samples the bits of tiny_tokenizer_file's encoder."""
    from infinity.train.__main__ import main
    from infinity.transformer import Infinity

    folder = tmp_path_factory.mktemp("sampler")
    torch.manual_seed(0)
    transformer = save_model(Infinity(TINY.transformer), folder / "weights.safetensors")
    assert main(["export", "--recipe", "shapes-tiny", "--tokenizer", str(tiny_tokenizer_file),
                 "--transformer", str(transformer), "--out", str(folder / "model"), "--tau", "0.5"]) == 0
    return folder / "model"


def _sampler(folder: Path) -> CaptionSampler:
    from infinity.train.__main__ import _caption_sampler  # the CLI's --sample-from

    return _caption_sampler(str(folder))


def test_decoder_trains_on_the_transformers_samples(tmp_path, tiny_tokenizer_file, tiny_model_folder):
    task = _tokenizer_task(init_from=str(tiny_tokenizer_file), decoder_only=True, sampler=_sampler(tiny_model_folder),
                           sample_share=0.5, sample_given_scales=1)
    assert task.identity()["sample_from"] == str(tiny_model_folder)
    run = RunConfig(out_dir=str(tmp_path), steps=3, batch_size=4, optim=OptimConfig(warmup_steps=1), progress=False,
                    log_every=1)
    train(task, run, CPU)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < line["psnr_from_samples"] < 100 for line in lines if "loss" in line)
    old, new = load_model(tiny_tokenizer_file).state_dict(), load_model(tmp_path / "tokenizer.safetensors").state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("encoder."))
    assert not all(torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))


def test_sampled_features_keep_the_given_scales_of_the_image(tiny_tokenizer_file, tiny_model_folder):
    task = _tokenizer_task(init_from=str(tiny_tokenizer_file), decoder_only=True, sampler=_sampler(tiny_model_folder))
    schedule, d = TINY.schedules["1:1"], TINY.tokenizer.bits
    batch = task.source.batch(0, 3, slice(0, 3))
    x = batch.images_B3HW
    truth = task.model.encode_scales(x, schedule.scales).quantized
    K = schedule.num_scales
    given_all_but_last = task.sampler.features(x, batch.captions, schedule, K - 1, seed=1)
    # only the last scale was sampled: F differs from the truth by whole flipped bits of the last codes (+-2/sqrt(d))
    gap = (given_all_but_last - truth).abs()
    assert torch.allclose(gap[gap > 1e-5], torch.tensor(2 / d**0.5)) and (gap > 1e-5).any()
    assert torch.equal(task.sampler.features(x, batch.captions, schedule, 1, seed=1),
                       task.sampler.features(x, batch.captions, schedule, 1, seed=1))
    assert not torch.equal(task.sampler.features(x, batch.captions, schedule, 1, seed=1),
                           task.sampler.features(x, batch.captions, schedule, 1, seed=2))


def test_training_on_samples_refuses_what_cannot_work(tmp_path, tiny_tokenizer_file, tiny_model_folder):
    init, sampler = str(tiny_tokenizer_file), _sampler(tiny_model_folder)
    with pytest.raises(ValueError, match="--decoder-only"):
        _tokenizer_task(init_from=init, sampler=sampler)
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="share"):
            _tokenizer_task(init_from=init, decoder_only=True, sampler=sampler, sample_share=share)
    with pytest.raises(ValueError, match="at least one to sample"):
        _tokenizer_task(init_from=init, decoder_only=True, sampler=sampler, sample_given_scales=4)
    torch.manual_seed(1)
    other = save_model(BitwiseTokenizer(TINY.tokenizer), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="another encoder"):
        _tokenizer_task(init_from=str(other), decoder_only=True, sampler=sampler)


def test_trainers_import_neither_each_other_nor_the_pipeline():
    import ast

    for name in ("tokenizer_trainer", "transformer_trainer"):
        tree = ast.parse((ROOT / "infinity" / "train" / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"tokenizer_trainer", "transformer_trainer", "pipeline", "infinity.pipeline"}, name


def test_a_run_in_segments_ends_in_the_state_of_a_run_straight_through(tmp_path):
    run = dict(steps=6, batch_size=4, optim=OptimConfig(warmup_steps=2), checkpoint_every=4, progress=False)
    torch.manual_seed(0)
    straight = _tokenizer_task()
    train(straight, RunConfig(out_dir=str(tmp_path / "a"), **run), CPU)
    for stop in (3, 5, 6):
        torch.manual_seed(0 if stop == 3 else 123)  # later segments: fresh processes, weights from the checkpoint
        segment = _tokenizer_task()
        train(segment, RunConfig(out_dir=str(tmp_path / "b"), resume=True, stop_at=stop, **run), CPU)
        assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == stop
    a, b = _state(straight.model), _state(segment.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = _tokenizer_task()  # a finished run resumed: nothing trained, its weights exported again
    train(again, RunConfig(out_dir=str(tmp_path / "b"), resume=True, **run), CPU)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 6
    c = _state(again.model)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_start_step_continues_the_schedule_with_a_fresh_warmup(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("infinity.train.loop.set_lr", lambda opt, lr: seen.append(lr))
    optim = OptimConfig(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)
    task = _tokenizer_task()
    train(task, RunConfig(out_dir=str(tmp_path), steps=10, batch_size=4, optim=optim, start_step=6, progress=False),
          CPU)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 10
    assert seen == pytest.approx([lr_at(6, 10, optim) / 2, lr_at(7, 10, optim), lr_at(8, 10, optim),
                                  lr_at(9, 10, optim)])
    with pytest.raises(ValueError, match="start_step"):
        RunConfig(out_dir=str(tmp_path), steps=10, batch_size=4, start_step=10)


def test_low_resolution_stages_train_on_whole_downscaled_images_first():
    from infinity.train.tokenizer_trainer import downscale, parse_low_res

    assert parse_low_res(["16:5", "8:2"]) == ((8, 2), (16, 5))
    with pytest.raises(ValueError, match="SIZE:UNTIL"):
        parse_low_res(["16"])
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    small, scales = downscale(x, [(1, 1), (2, 3), (4, 6), (8, 12)], 16, 4)
    assert small.shape == (2, 3, 16, 24) and scales == [(1, 1), (2, 3), (4, 6)]
    assert torch.allclose(small.mean(), x.mean(), atol=1e-6)  # area averaging keeps the colours
    task = _tokenizer_task(low_res=((16, 2),))
    task.setup(CPU, task.model)
    sizes = []
    task.wrapped = lambda x, scales: (sizes.append(min(x.shape[-2:])), task.model(x, scales))[1]
    for step in (0, 1, 2, 3):
        task.losses(step, CPU)
    assert sizes == [16, 16, 32, 32]  # the short side: 16 px before step 2, the schedules' 32 px after
    with pytest.raises(ValueError, match="multiple of the patch size"):
        _tokenizer_task(low_res=((6, 2),))
    with pytest.raises(ValueError, match="whole images"):
        _tokenizer_task(low_res=((16, 2),), crop_size=16)


def test_coarse_steps_train_the_first_scales_of_the_same_objective(tiny_tokenizer_file):
    from infinity.schedules import Schedule
    from infinity.transformer import Infinity

    full = TINY.schedules["1:1"]  # grids 1, 2, 4, 8
    prefix = Schedule(full.scales[:3], full.patch_size, full.h_div_w)
    torch.manual_seed(0)
    model = Infinity(TINY.transformer).eval()
    text_BTE, lens_B = torch.randn(2, 5, 384), torch.tensor([5, 3])
    x_BLd = torch.randn(2, full.seq_len - 1, TINY.transformer.bits)
    with torch.no_grad():
        logits_full = model(text_BTE, lens_B, x_BLd, full)
        logits_prefix = model(text_BTE, lens_B, x_BLd[:, :prefix.seq_len - 1], prefix)
    # the causal mask and positions that do not depend on the last scale: a coarse step is the full loss's first terms
    torch.testing.assert_close(logits_prefix, logits_full[:, :prefix.seq_len], atol=1e-5, rtol=1e-5)

    seen = []

    def recording(task):
        forward = task.wrapped

        def wrapped(text_BTE, lens_B, x_BLd, schedule, **kw):
            seen.append((schedule.num_scales, x_BLd.shape[1] == schedule.seq_len - 1))
            return forward(text_BTE, lens_B, x_BLd, schedule, **kw)
        task.wrapped = wrapped

    tasks = []
    for share in (0.5, 0.5, 0.0):
        task = _transformer_task(tiny_tokenizer_file)
        task.loss_cfg = TransformerLoss(coarse_scales=3, coarse_share=share)
        task.setup(CPU, task.model)
        recording(task)
        for step in range(12):
            task.losses(step, CPU)
        tasks.append(seen[-12:])
    assert tasks[0] == tasks[1], "which steps are coarse depends on (seed, step) alone"
    assert set(tasks[0]) == {(3, True), (4, True)}
    assert set(tasks[2]) == {(4, True)}
    task = _transformer_task(tiny_tokenizer_file)
    task.loss_cfg = TransformerLoss(coarse_scales=3, coarse_share=1.0)
    torch.manual_seed(0)
    before, after = _one_step_lowers_loss(task)
    assert after < before
    # checkpoints written before coarse steps existed resume: without them the identity has no coarse fields
    assert "coarse_share" not in _transformer_task(tiny_tokenizer_file).identity()["loss"]
    assert task.identity()["loss"]["coarse_share"] == 1.0
    with pytest.raises(ValueError, match="coarse"):
        TransformerLoss(coarse_scales=1, coarse_share=0.5)
