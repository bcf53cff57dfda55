"""What only a CUDA GPU can check (skipped elsewhere; benchmarks/gpu_check.sh runs them): every installed attention
library against SDPA, the bf16 pipeline against fp32, TF32 on, and the offloaded encoder's pinned round trip."""
import copy

import pytest
import torch
import torch.nn.functional as F

from infinity.transformer import blocks
from tests.test_pipeline import DEFAULTS, SCHEDULES, random_models
from tests.test_speed_precision import scale_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("backend", ["xformers", "flash"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_installed_attention_libraries_agree_with_sdpa(backend, dtype):
    if blocks._kernel(backend) is None:
        pytest.skip(f"{backend} is not installed")
    g = torch.Generator(CUDA).manual_seed(0)
    q, k, v = (torch.randn(2, 16, n, 128, generator=g, device=CUDA, dtype=dtype) for n in (256, 1280, 1280))
    expected = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(2, 256, -1)
    blocks.set_attention_backend(backend)
    try:
        out = blocks.attention(q, k, v, scale=1.0)
    finally:
        blocks.set_attention_backend(None)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


@pytest.fixture(scope="module")
def pipes():
    from infinity.pipeline import InfinityPipeline
    from infinity.text import MiniLMTextEncoder

    minilm = MiniLMTextEncoder.from_pretrained(max_length=32)
    tokenizer, transformer = random_models(seed=1)
    return lambda dtype: InfinityPipeline(copy.deepcopy(tokenizer), copy.deepcopy(transformer), minilm, SCHEDULES,
                                          DEFAULTS, "tiny", CUDA, dtype)


def test_bf16_pipeline_on_cuda_stays_close_to_fp32(pipes):
    full = pipes(torch.float32)
    assert torch.backends.cuda.matmul.allow_tf32  # set by the CUDA pipeline
    reference, bits = scale_logits(full)
    half = pipes(torch.bfloat16)
    assert half.transformer.blocks[0].ffn.fc1.weight.dtype == torch.bfloat16
    logits, _ = scale_logits(half, prefix_bits=bits)
    assert (reference - logits).abs().mean() < 0.05 * reference.abs().mean()
    assert half("a red cube", seed=0).image.size == (16, 16) and half.device_name == torch.cuda.get_device_name()


def test_offloaded_encoder_on_cuda_round_trips_through_pinned_memory():
    from infinity.text import MiniLMTextEncoder

    encoder = MiniLMTextEncoder.from_pretrained(max_length=32)
    expected_BTE, _ = encoder.encode(["a red cube"])
    encoder.pin_host_copy()
    assert all(p.is_pinned() for p in encoder.model.parameters())
    encoder.to(CUDA)
    text_BTE, _ = encoder.encode(["a red cube"])
    encoder.to("cpu")
    assert all(p.is_pinned() and p.device.type == "cpu" for p in encoder.model.parameters())
    torch.testing.assert_close(text_BTE.cpu(), expected_BTE, atol=1e-4, rtol=1e-4)
