"""Defects of the GPU path that a CPU can catch: ZeroGPU start-up order, CUDA calls outside a GPU call, the
offloaded text encoder under concurrent requests (and its pinned host copy), TF32, and FSDP with on-policy
sampling. (The attention backend that fails its first call: tests/test_attention.py.)"""
import sys
import threading
import time

import pytest
import torch

from infinity import pipeline as pipeline_module
from infinity.app import runtime
from infinity.pipeline import InfinityPipeline
from tests.test_pipeline import DEFAULTS, SCHEDULES, TINY_TRANSFORMER, random_models
from tests.test_text import tiny_t5


# ---- ZeroGPU ----


@pytest.fixture
def stand_in_spaces(tmp_path, monkeypatch):
    """A `spaces` package on the path that notes, when imported, whether CUDA was initialised already; CUDA counts
    as initialised once the model is loaded (what `.to("cuda")` does on a GPU machine)."""
    (tmp_path / "spaces.py").write_text(
        "import torch\nCUDA_AT_IMPORT = torch.cuda.is_initialized()\n"
        "def GPU(duration=60):\n    return lambda fn: fn\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cuda = {"initialised": False}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda["initialised"])
    yield cuda
    sys.modules.pop("spaces", None)


def test_app_imports_spaces_before_loading_the_model(stand_in_spaces, monkeypatch):
    import app

    seen = {}

    def load_pipeline(model, device):
        seen["spaces imported"] = "spaces" in sys.modules
        stand_in_spaces["initialised"] = True
        raise ValueError("stop here: the model would load now")

    monkeypatch.setattr(runtime, "load_pipeline", load_pipeline)
    with pytest.raises(SystemExit, match="stop here"):
        app.main(["--model", "any", "--device", "cpu"])
    assert seen == {"spaces imported": True}
    assert sys.modules["spaces"].CUDA_AT_IMPORT is False


def test_device_name_does_not_initialise_cuda(monkeypatch):
    tokenizer, transformer = random_models()
    pipe = InfinityPipeline(tokenizer, transformer, tiny_encoder(), SCHEDULES, DEFAULTS, "tiny", "cpu", torch.float32)
    pipe.device = torch.device("cuda")  # as a ZeroGPU Space places it, CUDA not up outside a GPU call

    def no_cuda(*args):
        raise AssertionError("CUDA called outside a GPU call")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    assert pipe.device_name == "CUDA" and "**CUDA**" in runtime.banner(pipe, None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    assert pipe.device_name == "NVIDIA H100 80GB HBM3"


# ---- the offloaded text encoder ----


def tiny_encoder():
    """A tiny random T5 giving the channels of the tiny transformer (E = 384)."""
    from transformers import T5Config, T5EncoderModel

    encoder = tiny_t5()
    torch.manual_seed(0)
    config = T5Config(vocab_size=encoder.model.config.vocab_size, d_model=TINY_TRANSFORMER.text_channels, d_kv=8,
                      d_ff=64, num_layers=1, num_heads=4)
    encoder.model = T5EncoderModel(config).eval()
    return encoder


class RecordingEncoder:
    """Wraps an encoder: logs its moves and encodings (from any thread), and takes a while to encode."""

    def __init__(self, encoder):
        self.encoder, self.log, self.max_length, self.channels = encoder, [], encoder.max_length, encoder.channels

    def to(self, device):
        self.log.append("move")
        return self

    def encode(self, prompts):
        self.log.append("start")
        time.sleep(0.05)  # long enough for another thread to step in
        out = self.encoder.encode(prompts)
        self.log.append("end")
        return out


def run_threads(fn, args):
    threads = [threading.Thread(target=fn, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_offloaded_encoder_serves_concurrent_requests_one_at_a_time():
    tokenizer, transformer = random_models()
    encoder = RecordingEncoder(tiny_encoder())
    pipe = InfinityPipeline(tokenizer, transformer, encoder, SCHEDULES, DEFAULTS, "tiny", "cpu", torch.float32,
                            offload_text_encoder=True)
    prompts = ["a red cube", "a small dog", "the sea", "a sunny beach"]
    run_threads(pipe.encode_prompt, prompts)
    # Each encoding between its own move to the device and back: no request moves the encoder under another.
    assert encoder.log == ["move", "start", "end", "move"] * len(prompts)
    encoder.log.clear()
    run_threads(pipe.encode_prompt, ["next to the sea"] * 4)  # the same new prompt four times at once
    assert encoder.log.count("start") == 1  # encoded once, then read from the cache
    text_1TE, lens_1 = pipe.encode_prompt("a red cube")
    torch.testing.assert_close(text_1TE, encoder.encoder.encode(["a red cube"])[0])


def test_pinned_host_copy_is_reused_on_every_return_to_the_cpu(monkeypatch):
    encoder = tiny_encoder()
    expected_BTE, _ = encoder.encode(["a red cube"])
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())  # page-locking needs a GPU driver
    encoder.pin_host_copy()
    host = [p.data_ptr() for p in encoder.model.parameters()]
    moves = []

    def to_gpu(device, non_blocking=False):  # stands in for the copy to the GPU: new storage for every parameter
        moves.append((str(device), non_blocking))
        for p in encoder.model.parameters():
            p.data = p.data.clone()
        return encoder.model

    monkeypatch.setattr(encoder.model, "to", to_gpu)
    for _ in range(2):
        encoder.to("cuda")
        assert not {p.data_ptr() for p in encoder.model.parameters()} & set(host)
        encoder.to("cpu")
        assert [p.data_ptr() for p in encoder.model.parameters()] == host  # no new host memory per round trip
    assert moves == [("cuda", True)] * 2  # asynchronous copies from pinned memory
    text_BTE, _ = encoder.encode(["a red cube"])
    torch.testing.assert_close(text_BTE, expected_BTE)


# ---- TF32, FSDP ----


def test_cuda_pipelines_let_fp32_matmuls_use_tf32():
    # Saved and restored by hand: the cuBLAS settings object answers attribute access through properties that
    # monkeypatch cannot undo (pytest >= 9.2 tries to delete them).
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        pipeline_module.prepare_device(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32
        pipeline_module.prepare_device(torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fsdp_with_on_policy_sampling_is_refused_with_a_clear_message(tmp_path, capsys):
    from infinity.train.__main__ import main

    argv = ["transformer", "--out", str(tmp_path), "--steps", "1", "--tokenizer", str(tmp_path / "t.safetensors"),
            "--fsdp", "--on-policy-share", "0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --fsdp cannot be combined with --on-policy-share") and "DDP" in err
