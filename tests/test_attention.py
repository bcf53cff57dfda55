"""Attention backend choice: SDPA by default, clear errors for unknown or unavailable kernels, and the dispatch
giving exactly the numbers of a direct scaled_dot_product_attention call (the GPU kernels cannot run here)."""
import pytest
import torch
import torch.nn.functional as F

from infinity.transformer import blocks
from infinity.transformer.blocks import attention, attention_backend, set_attention_backend


@pytest.fixture(autouse=True)
def no_choice(monkeypatch):
    monkeypatch.delenv(blocks.ATTENTION_ENV, raising=False)
    monkeypatch.setattr(blocks, "_proven", set())
    monkeypatch.setattr(blocks, "_broken", set())
    set_attention_backend(None)
    yield
    set_attention_backend(None)


def _qkv(B=2, N=3, l=5, L=7, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, l, c, generator=g), torch.randn(B, N, L, c, generator=g), torch.randn(B, N, L, c, generator=g)


def test_default_is_auto_and_runs_sdpa_on_cpu():
    assert attention_backend() == "auto"
    q, k, v = _qkv()
    assert blocks._kernel_for(q, None) == "sdpa"


@pytest.mark.parametrize("backend", ["auto", "sdpa"])
def test_dispatch_equals_sdpa_exactly(backend):
    set_attention_backend(backend)
    q, k, v = _qkv()
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every query sees a key
    for m, scale in ((None, None), (mask, 1.0), (mask[:, :, :1], None)):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale).transpose(1, 2).reshape(2, 5, 24)
        assert torch.equal(attention(q, k, v, m, scale=scale), expected)


@pytest.mark.parametrize("backend", ["xformers", "flash"])
def test_unavailable_backend_is_a_clear_error(backend, monkeypatch):
    monkeypatch.setattr(blocks, "_kernel", lambda name: None)  # as on a machine without the library
    library = {"xformers": "xformers", "flash": "flash_attn"}[backend]
    message = rf"attention backend '{backend}' \(set_attention_backend\) is not available: `import {library}` fails"
    with pytest.raises(RuntimeError, match=message):
        set_attention_backend(backend)
    monkeypatch.setenv(blocks.ATTENTION_ENV, backend)
    with pytest.raises(RuntimeError, match=rf"'{backend}' \(\$INFINITY_ATTENTION\) is not available"):
        attention(*_qkv())


def test_unknown_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown attention backend 'cudnn'.*auto, sdpa, xformers, flash"):
        set_attention_backend("cudnn")
    monkeypatch.setenv(blocks.ATTENTION_ENV, "tri-dao")
    with pytest.raises(ValueError, match=r"unknown attention backend 'tri-dao' \(\$INFINITY_ATTENTION\)"):
        attention_backend()


def test_environment_variable_and_explicit_choice(monkeypatch):
    monkeypatch.setenv(blocks.ATTENTION_ENV, "sdpa")
    assert attention_backend() == "sdpa"
    set_attention_backend("auto")  # an explicit choice wins over the environment
    assert attention_backend() == "auto"
    set_attention_backend(None)
    assert attention_backend() == "sdpa"


def test_gpu_kernels_refuse_cpu_tensors_and_masks_fall_back_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(blocks, "_kernel", lambda name: (lambda *a, **kw: calls.append(name)))  # "installed"
    set_attention_backend("flash")
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="runs on CUDA only"):
        attention(q, k, v)
    # Neither library's public kernel takes a boolean mask: masked calls run on SDPA whatever the choice.
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24)
    assert torch.equal(attention(q, k, v, mask), expected)
    assert calls == []


def test_auto_picks_a_library_only_for_unmasked_cuda_tensors(monkeypatch):
    class FakeCuda:  # what _kernel_for reads of a tensor
        is_cuda = True

        def __init__(self, dtype):
            self.dtype = dtype

    available = {"flash", "xformers"}
    monkeypatch.setattr(blocks, "_kernel", lambda name: (lambda: None) if name in available else None)
    assert blocks._kernel_for(FakeCuda(torch.bfloat16), None) == "flash"
    assert blocks._kernel_for(FakeCuda(torch.float32), None) == "xformers"  # flash-attn is half precision only
    assert blocks._kernel_for(FakeCuda(torch.bfloat16), torch.ones(1, dtype=torch.bool)) == "sdpa"
    available.clear()
    assert blocks._kernel_for(FakeCuda(torch.bfloat16), None) == "sdpa"


def _reference_BLNc(q_BlNc, k_BLNc, v_BLNc, scale):
    """Attention in the libraries' (B, L, N, c) layout, for fakes of their kernels."""
    out_BNlc = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q_BlNc, k_BLNc, v_BLNc)), scale=scale)
    return out_BNlc.transpose(1, 2).contiguous()


@pytest.mark.parametrize("backend", ["xformers", "flash"])
def test_library_branches_pass_the_documented_layout_and_arguments(backend, monkeypatch):
    """Fakes with the libraries' signatures: memory_efficient_attention(query, key, value, attn_bias=None, p=0.0,
    scale=None) and flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False), all (B, L, N, c)."""
    seen = {}

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        seen.update(shape=tuple(query.shape), dtype=query.dtype)
        return _reference_BLNc(query, key, value, scale)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        seen.update(shape=tuple(q.shape), dtype=q.dtype)
        return _reference_BLNc(q, k, v, softmax_scale)

    fake = {"xformers": memory_efficient_attention, "flash": flash_attn_func}[backend]
    monkeypatch.setattr(blocks, "_kernel", lambda name: fake)
    monkeypatch.setattr(blocks, "_kernel_for", lambda q, mask: backend)  # as on CUDA
    q, k, v = _qkv()
    for scale in (None, 1.0):
        expected = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(2, 5, 24)
        atol = 0 if backend == "xformers" else 0.05  # flash computes fp32 inputs in bf16
        torch.testing.assert_close(attention(q, k, v, scale=scale), expected, atol=atol, rtol=0.02 if atol else 0)
        assert seen["shape"] == (2, 5, 3, 8)
        assert seen["dtype"] == (torch.float32 if backend == "xformers" else torch.bfloat16)
    assert attention(q, k, v).dtype == torch.float32


def test_auto_drops_a_library_that_fails_its_first_call_once_and_logged(monkeypatch, caplog):
    """A wheel built for another torch imports (with a warning) and fails when called: "auto" falls back to SDPA."""
    calls = []

    def broken_flash(q, k, v, softmax_scale=None):
        calls.append("flash")
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\n(more lines)")

    monkeypatch.setattr(blocks, "_kernel", lambda name: broken_flash if name == "flash" else None)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # what _kernel_for reads
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 24)
    with caplog.at_level("WARNING", logger=blocks.__name__):
        for _ in range(3):
            torch.testing.assert_close(attention(q, k, v), expected)
    assert calls == ["flash"]  # tried once, then SDPA
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'flash' failed its first call (RuntimeError: FlashAttention only" in warnings[0]


def test_a_chosen_library_that_fails_raises_and_a_proven_one_is_not_dropped(monkeypatch):
    def broken(q, k, v, softmax_scale=None):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(blocks, "_kernel", lambda name: broken)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    set_attention_backend("flash")  # asked for by name: its failure is the user's to see
    with pytest.raises(RuntimeError, match="kernel launch failed"):
        attention(q, k, v)
    set_attention_backend(None)
    blocks._proven.add("flash")  # worked before: a later failure is a real error, not a broken build
    with pytest.raises(RuntimeError, match="kernel launch failed"):
        attention(q, k, v)
