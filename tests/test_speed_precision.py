"""The transformer's precision: chosen by what the CPU multiplies natively, bf16 as the official code runs it
(blocks in bf16, the rest and the residual stream in fp32, under autocast), and the opt-in int8 blocks."""
import copy

import pytest
import torch

from infinity import precision
from infinity.pipeline import InfinityPipeline
from infinity.precision import auto_dtype, cast_blocks_, cpu_flags, cpu_model, native_bf16
from tests.test_pipeline import DEFAULTS, SCHEDULES, random_models

X86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f {extra}\n\nprocessor\t: 1\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd {extra}\nCPU implementer\t: 0x41\n"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("text, extra, bf16", [
    (X86, "", False), (X86, "avx512_bf16", True), (X86, "amx_bf16 amx_tile", True), (ARM, "", False), (ARM, "bf16", True),
])
def test_auto_dtype_follows_the_cpu_flags(text, extra, bf16, monkeypatch):
    cpuinfo = text.format(extra=extra)
    assert ("avx2" in cpu_flags(cpuinfo)) == (text == X86)
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: cpu_flags(cpuinfo))  # as if this were the CPU
    assert native_bf16(CPU) == bf16
    assert auto_dtype(CPU, released=True) == (torch.bfloat16 if bf16 else torch.float32)
    assert auto_dtype(CPU, released=False) == torch.float32  # our own models: trained and shipped in fp32
    assert auto_dtype(CUDA, released=True) == torch.bfloat16  # as the official inference
    assert cpu_model(cpuinfo) == ("AMD EPYC 9R14" if text == X86 else "unknown")
    assert cpu_model("") == "unknown"


@pytest.mark.parametrize("flags, dtype", [(frozenset({"avx2"}), torch.float32), (frozenset({"avx512_bf16"}), torch.bfloat16)])
def test_the_released_models_load_in_the_dtype_the_cpu_runs_fast(flags, dtype, tmp_path, monkeypatch):
    from tests.test_pipeline import MiniLMTextEncoder, use_tiny_official, write_official_files

    minilm = MiniLMTextEncoder.from_pretrained(max_length=32)
    write_official_files(use_tiny_official(monkeypatch, minilm, "infinity-2b"), tmp_path)
    monkeypatch.setattr(precision, "cpu_flags", lambda *args: flags)
    pipe = InfinityPipeline.from_pretrained(tmp_path, device="cpu", local_files_only=True)
    assert pipe.dtype == dtype and pipe.precision == str(dtype).removeprefix("torch.")
    assert pipe.transformer.blocks[0].ffn.fc1.weight.dtype == dtype and pipe.transformer.head.weight.dtype == torch.float32
    forced = InfinityPipeline.from_pretrained(tmp_path, device="cpu", dtype=torch.float32, local_files_only=True)
    assert forced.precision == "float32"  # the user's choice wins


def scale_logits(pipe, prefix_bits=None):
    """Every scale's logits of one guided image; with the bits of another run as a prefix, both runs see the same
    inputs at every scale, so their logits can be compared."""
    events = list(pipe.stream("a red cube", seed=3, preview=False, prefix_bits=prefix_bits))
    return torch.cat([e.logits_BlV.flatten(1) for e in events], dim=1), [e.bits_Bhwd for e in events]


@pytest.fixture(scope="module")
def pipes():
    from infinity.text import MiniLMTextEncoder

    minilm = MiniLMTextEncoder.from_pretrained(max_length=32)
    tokenizer, transformer = random_models(seed=1)
    def make(dtype):
        return InfinityPipeline(copy.deepcopy(tokenizer), copy.deepcopy(transformer), minilm, SCHEDULES, DEFAULTS,
                                "tiny", "cpu", dtype)
    return make


def test_bf16_follows_the_official_scheme_and_moves_the_logits_less_than_a_whole_cast(pipes):
    full, half = pipes(torch.float32), pipes(torch.bfloat16)
    model = half.transformer
    assert {p.dtype for n, p in model.named_parameters() if not n.startswith("blocks.")} == {torch.float32}
    assert model.blocks[0].sa.mat_qkv.weight.dtype == torch.bfloat16 and model.blocks[0].ca_norm.weight.dtype == torch.float32
    residual = []
    hooks = [b.register_forward_hook(lambda m, i, out: residual.append(out.dtype)) for b in model.blocks]
    reference, bits = scale_logits(full)
    official, _ = scale_logits(half, prefix_bits=bits)
    for hook in hooks:
        hook.remove()
    assert residual and set(residual) == {torch.float32}  # the stream between the blocks stays fp32
    assert not torch.is_autocast_enabled("cpu")  # autocast does not leak out of the stream

    # The whole transformer in bf16 (what this code did before): same weights, same inputs.
    whole = pipes(torch.float32)
    whole.transformer.bfloat16()
    whole_logits, _ = scale_logits(whole, prefix_bits=bits)
    moved, moved_whole = (reference - official).abs().mean(), (reference - whole_logits).abs().mean()
    assert 0 < moved < 0.9 * moved_whole, (moved, moved_whole)


def test_int8_blocks_are_an_opt_in_that_stays_close_to_fp32(pipes):
    full, quantized = pipes(torch.float32), pipes(torch.float32).quantize_int8()
    assert quantized.precision == "int8" and full.precision == "float32"
    reference, bits = scale_logits(full)
    logits, _ = scale_logits(quantized, prefix_bits=bits)
    assert 0 < (reference - logits).abs().mean() < 0.05 * reference.abs().mean()
    assert quantized("a red cube", seed=0).image.size == (16, 16)
    with pytest.raises(ValueError, match="int8 needs an fp32 pipeline on the CPU"):
        pipes(torch.bfloat16).quantize_int8()


def test_official_weights_load_straight_into_the_mixed_dtypes(tmp_path):
    from infinity.checkpoints import load_official_transformer
    from tests.test_pipeline import TINY_TRANSFORMER, _official_state_dict

    _, transformer = random_models()
    torch.save(_official_state_dict(transformer), tmp_path / "t.pth")
    loaded = load_official_transformer(tmp_path / "t.pth", TINY_TRANSFORMER, torch.bfloat16)
    expected = cast_blocks_(copy.deepcopy(transformer), torch.bfloat16).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) and loaded.state_dict()[k].dtype == v.dtype
               for k, v in expected.items())


def test_int8_quantization_frees_the_fp32_weights_at_once():
    """The swapped-out fp32 Linear layers are freed when quantize_int8_ returns, not at some later garbage
    collection: a large model built block by block would otherwise hold every fp32 block (2B: 11 GiB, not 3)."""
    import gc
    import weakref

    from infinity.transformer import Infinity
    from tests.test_bench import TINY

    blocks = Infinity(TINY).blocks
    weights = [weakref.ref(m.weight) for m in blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert weights
    gc.disable()  # no collection may run between the quantization and the check but the one it makes
    try:
        precision.quantize_int8_(blocks)
        assert all(w() is None for w in weights)
    finally:
        gc.enable()
