"""The benchmark harness (`python -m infinity.bench`) on the tiny recipe: its JSON, stage times that add up, its
CLI errors; the sampler's timer hook and cheap previews; the GPU-path properties checkable on a CPU (one batched
CFG step per scale, a KV cache that never reallocates, bf16 within bf16 tolerance of fp32); FLOP counts on the
meta device; and the H100 comparison script's argument parsing and its refusal without CUDA."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

from infinity.bench import __main__ as bench_cli
from infinity.bench.flops import decode_flops, prompt_tokens, transformer_flops
from infinity.bench.harness import STAGE_NAMES, StageClock, Timings, Run
from infinity.bench.models import RandomTokens, build, fill_random_, random_model
from infinity.pipeline import PROMPT_CACHE_SIZE
from infinity.precision import cpu_model
from infinity.sampling import STAGES, decode_preview, preview_grid, sample_scales
from infinity.schedules import Schedule, get_schedule
from infinity.text import T5TextEncoder
from infinity.tokenizer import BitwiseTokenizer, TokenizerConfig
from infinity.transformer import Infinity, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = TransformerConfig(depth=2, width=64, num_heads=4, bits=8, text_channels=128, text_maxlen=12, drop_path_rate=0.0)
TINY_TOKENIZER = TokenizerConfig(
    bits=8, base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, patch_size=4
)
SCHEDULE = Schedule(scales=((1, 1), (2, 2), (3, 3), (4, 4)), patch_size=4)


@pytest.fixture(scope="module")
def tiny():
    model = random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.float32, seed=0)
    tokenizer = random_model(lambda: BitwiseTokenizer(TINY_TOKENIZER), torch.device("cpu"), torch.float32, seed=1)
    text_BTE = torch.randn(1, 5, TINY.text_channels, generator=torch.Generator().manual_seed(2))
    return model, tokenizer, text_BTE, torch.tensor([5])


def sample(tiny, **kwargs):
    model, tokenizer, text_BTE, lens_B = tiny
    return list(sample_scales(model, tokenizer, text_BTE, lens_B, SCHEDULE, cfg=3.0,
                              generator=torch.Generator().manual_seed(0), **kwargs))


# ---- python -m infinity.bench ----


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    # One thread: with two, a CPU shared with another busy process stalls every parallel op (see the README).
    argv = ["--preset", "shapes-tiny", "--device", "cpu", "--threads", "1", "--runs", "3", "--warmup", "1",
            "--previews", "--json", str(path)]
    assert bench_cli.main(argv) == 0
    return json.loads(path.read_text())


def test_bench_json_has_the_documented_schema(bench_json):
    assert bench_json["preset"] == "shapes-tiny" and bench_json["device"] == "cpu"
    assert bench_json["weights"] == "random" and bench_json["runs_count"] == 3 and len(bench_json["runs"]) == 3
    assert bench_json["dtype"] == "float32" and bench_json["cpu_model"] == cpu_model() != ""
    assert [len(v) for v in bench_json["load_average"].values()] == [3, 3]  # what else ran, at start and end
    assert isinstance(bench_json["median_s"], float) and bench_json["median_s"] > 0
    assert isinstance(bench_json["peak_memory_bytes"], int) and bench_json["peak_memory_bytes"] > 0
    K = len(bench_json["schedule"])
    assert [name for name in bench_json["stages"] if name.startswith("transformer_step")] == [
        f"transformer_step_{k:02d}" for k in range(K)
    ]
    assert {"text_encoding", "text_conditioning", "bit_sampling", "feature_update", "vae_decode", "image_to_pil"} < set(
        bench_json["stages"]
    )
    assert "preview_decode" not in bench_json["stages"]  # the main runs are without previews
    assert bench_json["previews"]["stages"]["preview_decode"] > 0 and math.isfinite(bench_json["previews"]["overhead"])
    flops = bench_json["flops"]
    assert flops["total"] == flops["text_encoding"] + flops["transformer"] + flops["vae_decode"] > 0
    assert bench_json["gflops_per_s"]["total"] > 0 and bench_json["matmul_peak_gflops"] > 0


def test_bench_stage_times_are_positive_and_add_up_to_at_most_the_total(bench_json):
    for run in bench_json["runs"]:  # stages never overlap: within one run they add up to at most its total
        assert all(seconds > 0 for seconds in run["stages"].values()), run
        assert sum(run["stages"].values()) <= run["total_s"]
    # Medians of the parts need not add up exactly to the median total; they stay within noise of it.
    assert all(seconds > 0 for seconds in bench_json["stages"].values())
    assert sum(bench_json["stages"].values()) <= 1.1 * bench_json["median_s"]


def test_bench_table_names_every_stage(bench_json):
    table = bench_cli.format_table(bench_json)
    assert all(name in table for name in bench_json["stages"])
    assert "with a preview every scale" in table and "GFLOP/s" in table and "peak memory" in table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], "invalid choice: 'nope'"),
        (["--runs", "0"], "--runs must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--device", "cpu", "--threads", "0"], "--threads needs a positive count"),
        (["--device", "tpu"], "--device tpu: unknown device"),
        (["--preset", "embedded", "--budget", "1M"], "--budget applies to the released models (infinity-125m, "),
        (["--prompt-tokens", "0"], "--prompt-tokens must be >= 1"),
    ],
)
def test_bench_cli_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_cli_refuses_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        bench_cli.parse_args(["--device", "cuda"])
    assert "this machine has no usable CUDA GPU; use --device cpu" in capsys.readouterr().err


def test_bench_int8_runs_quantized_blocks(tmp_path):
    path = tmp_path / "int8.json"
    argv = ["--preset", "shapes-tiny", "--device", "cpu", "--threads", "1", "--runs", "1", "--dtype", "int8",
            "--json", str(path)]
    assert bench_cli.main(argv) == 0
    result = json.loads(path.read_text())
    assert result["dtype"] == "int8" and any("int8" in note for note in result["notes"])


def test_bench_cli_unknown_aspect_ratio_is_one_line(capsys):
    argv = ["--preset", "shapes-tiny", "--device", "cpu", "--threads", "1", "--aspect-ratio", "16:9", "--runs", "1"]
    assert bench_cli.main(argv) == 2
    assert "unknown aspect ratio '16:9'" in capsys.readouterr().err


def test_stage_medians_keep_pipeline_order():
    timings = Timings([Run(1.0, {"vae_decode": 0.2, "transformer_step_01": 0.1, "transformer_step_00": 0.1,
                                 "text_encoding": 0.1})])
    expected = ["text_encoding", "transformer_step_00", "transformer_step_01", "vae_decode"]
    assert list(timings.stage_medians()) == expected


# ---- the sampler's timer hook and previews ----


def test_sampler_enters_the_timer_around_every_stage_in_order(tiny):
    calls = []

    def timer(stage, scale_index=None):
        calls.append((stage, scale_index))
        return StageClock(torch.device("cpu"))(stage, scale_index)

    sample(tiny, preview=True, timer=timer)
    K = SCHEDULE.num_scales
    expected = [("conditioning", None)]
    for k in range(K):
        expected += [("transformer", k), ("sampling", k), ("update", k), ("preview" if k < K - 1 else "decode", k)]
    assert calls == expected and {stage for stage, _ in calls} == set(STAGES)
    assert set(STAGES) | {"text_encoding", "to_pil"} == set(STAGE_NAMES)


def test_timing_does_not_change_the_numbers(tiny):
    plain, timed = sample(tiny), sample(tiny, timer=StageClock(torch.device("cpu")))
    assert all(torch.equal(a.bits_Bhwd, b.bits_Bhwd) for a, b in zip(plain, timed))
    assert torch.equal(plain[-1].image_B3HW, timed[-1].image_B3HW)


def test_cheap_previews():
    assert [preview_grid((n, n), (16, 16)) for n in (1, 2, 4, 6, 8, 12)] == [
        (2, 2), (2, 2), (4, 4), (6, 6), (8, 8), (8, 8)
    ]
    assert preview_grid((1, 1), (1, 1)) == (1, 1) and preview_grid((3, 5), (4, 10)) == (2, 5)
    # Previews of a 0.06M schedule decode 0.73 of one full decode's cells; the 1M one 1.1.
    for budget, share in (("0.06M", 0.73), ("1M", 1.12)):
        grids = get_schedule("1:1", budget).scales
        cells = sum(math.prod(preview_grid(hw, grids[-1])) for hw in grids[:-1])
        assert cells / math.prod(grids[-1]) == pytest.approx(share, abs=0.01)


def test_previews_are_decodes_of_the_scale_grid_at_image_size(tiny):
    _, tokenizer, _, _ = tiny
    events = sample(tiny, preview=True)
    H, W = SCHEDULE.pixel_hw
    assert all(e.preview_B3HW.shape == (1, 3, H, W) and e.preview_B3HW.abs().max() <= 1 for e in events)
    assert torch.equal(events[-1].preview_B3HW, events[-1].image_B3HW)  # the last one is the image itself
    # A preview of a constant F (what scale 0 adds) is the decode of that constant at a 2x2 grid.
    F_BdHW = events[0].F_BdHW
    assert torch.equal(F_BdHW, F_BdHW[..., :1, :1].expand_as(F_BdHW))
    assert torch.allclose(decode_preview(tokenizer, F_BdHW, (1, 1)), events[0].preview_B3HW)
    small = tokenizer.decode(F_BdHW[..., :2, :2])
    assert torch.allclose(events[0].preview_B3HW[..., :1, :1], small[..., :1, :1], atol=1e-6)


def test_pipeline_encodes_a_prompt_once():
    pipe = build("shapes-tiny", torch.device("cpu")).pipe
    calls, encode = [], pipe.text_encoder.encode
    pipe.text_encoder.encode = lambda prompts: calls.append(prompts) or encode(prompts)
    first = list(pipe.stream("a red cube", seed=1, preview=False))
    again = list(pipe.stream("a red cube", seed=1, preview=False))
    assert calls == [["a red cube"]]  # the second image skipped the text encoder
    assert torch.equal(first[-1].image_B3HW, again[-1].image_B3HW)
    for i in range(PROMPT_CACHE_SIZE):
        pipe.encode_prompt(f"prompt {i}")
    pipe.encode_prompt("a red cube")  # pushed out by newer prompts: encoded again
    assert len(calls) == PROMPT_CACHE_SIZE + 2


# ---- GPU-path properties, checked on the CPU ----


def test_guidance_runs_one_batched_step_per_scale(tiny):
    model, _, _, _ = tiny
    batches, step = [], model.step

    def counting_step(k, x_Bld, text, cache, schedule):
        batches.append(text.cond_BD.shape[0])
        return step(k, x_Bld, text, cache, schedule)

    model.step = counting_step
    try:
        sample(tiny)
    finally:
        del model.step
    assert batches == [2] * SCHEDULE.num_scales  # [prompt; unconditional] in one call, not two


def test_kv_cache_is_written_in_place_and_text_projected_once(tiny):
    model, _, text_BTE, lens_B = tiny
    text = model.encode_text(torch.cat([text_BTE, text_BTE]), torch.cat([lens_B, lens_B]))
    cache = model.new_cache(2, SCHEDULE)
    storage, text_kv = cache.kv.data_ptr(), []
    with torch.no_grad():
        for k, (h, w) in enumerate(SCHEDULE.scales):
            model.step(k, None if k == 0 else torch.zeros(2, h * w, TINY.bits), text, cache, SCHEDULE)
            assert cache.kv.data_ptr() == storage  # no reallocation, no concatenation
            text_kv.append([kv[0].data_ptr() for kv in cache.text_kv])
    assert cache.length == SCHEDULE.seq_len and all(ptrs == text_kv[0] for ptrs in text_kv)


def test_bf16_steps_stay_within_bf16_tolerance_of_fp32(tiny):
    model, _, text_BTE, lens_B = tiny
    half = random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.bfloat16, seed=0)
    text_BTE, lens_B = torch.cat([text_BTE, text_BTE]), torch.cat([lens_B, lens_B])
    logits = {}
    with torch.no_grad():
        for m in (model, half):
            text, cache = m.encode_text(text_BTE.to(m.pos_start.dtype), lens_B), m.new_cache(2, SCHEDULE)
            g = torch.Generator().manual_seed(3)
            logits[m.pos_start.dtype] = [
                m.step(k, None if k == 0 else torch.randn(2, h * w, TINY.bits, generator=g).to(m.pos_start.dtype),
                       text, cache, SCHEDULE).float()
                for k, (h, w) in enumerate(SCHEDULE.scales)
            ]
    for full, low in zip(logits[torch.float32], logits[torch.bfloat16]):
        # bf16 keeps 8 bits of mantissa: 2^-8 relative per rounding, a few roundings deep.
        assert (full - low).abs().max() <= 0.05 * full.abs().max() + 1e-3


# ---- FLOPs and random models ----


def test_flops_scale_with_batch_and_area(tiny):
    model, tokenizer, _, _ = tiny
    guided, plain = (transformer_flops(model, SCHEDULE, 5, g) for g in (True, False))
    assert guided == 2 * plain > 0
    assert decode_flops(tokenizer, (4, 4)) == 4 * decode_flops(tokenizer, (2, 2)) > 0


def test_random_models_are_built_once_with_finite_values():
    model = random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.float32, seed=0)
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.text_norm.weight, torch.ones(TINY.text_channels))  # norm scales 1
    again = fill_random_(random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.float32, seed=5), 0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    half = random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.bfloat16, seed=0)
    assert all(torch.equal(a.bfloat16(), b) for a, b in zip(model.parameters(), half.parameters()))  # rounded


def test_released_models_are_refused_before_allocating_more_than_the_ram(monkeypatch):
    from infinity.bench import models

    monkeypatch.setattr(models, "_available_ram", lambda: 2**30)
    with pytest.raises(ValueError, match=r"Infinity-2B in float32 with a T5-XL encoder needs 1\d\.\d GiB"):
        models.build("infinity-2b", torch.device("cpu"), budget="0.06M")


def test_random_tokens_pad_like_the_t5_path():
    tokens = RandomTokens(num_tokens=6, vocab_size=100)
    padded = tokens(["a", "b"], max_length=10, padding="max_length")
    assert padded["input_ids"].shape == (2, 10) and padded["attention_mask"].sum(dim=1).tolist() == [6, 6]
    assert (padded["input_ids"][:, 5] == 1).all() and (padded["input_ids"][:, 6:] == 0).all()
    assert tokens(["a"], max_length=4, padding="longest")["input_ids"].shape == (1, 4)


def test_bench_t5_runs_at_the_prompts_length():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    encoder = T5TextEncoder(RandomTokens(num_tokens=6, vocab_size=100), T5EncoderModel(config))
    assert prompt_tokens(encoder, "a prompt") == (6, 6)  # what the FLOP count and the encoder run over
    text_BTE, lens_B = encoder.encode(["a prompt"])
    assert text_BTE.shape == (1, 6, 32) and lens_B.tolist() == [6]


# ---- benchmarks/h100_vs_official.py ----


@pytest.fixture(scope="module")
def h100_script():
    spec = importlib.util.spec_from_file_location("h100_vs_official", ROOT / "benchmarks" / "h100_vs_official.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_h100_script_arguments(h100_script, capsys):
    args = h100_script.parse_args([])
    assert (args.budget, args.cfg, args.tau, args.top_k, args.top_p, args.runs) == ("1M", 3.0, 0.5, 900, 0.97, 10)
    assert args.official_dir == ROOT / "third_party" / "Infinity" and args.worker is None
    for argv in (["--runs", "0"], ["--prompt-tokens", "600"], ["--budget", "2M"]):
        with pytest.raises(SystemExit):
            h100_script.parse_args(argv)
    assert "--prompt-tokens must be in [1, 512]" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a machine without CUDA")
def test_h100_script_refuses_to_run_without_cuda(h100_script):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        h100_script.main(["--runs", "1"])


def test_h100_script_says_how_to_fetch_the_official_code(h100_script, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="git clone https://github.com/FoundationVision/Infinity"):
        h100_script.check_machine(h100_script.parse_args(["--official-dir", str(tmp_path / "missing")]))


def test_flash_attn_stand_in_matches_per_prompt_attention(h100_script):
    flash = h100_script._flash_attn_stand_in()
    g = torch.Generator().manual_seed(0)
    lens_k, H, c, Lq = [3, 7], 2, 8, 5
    q = torch.randn(2 * Lq, H, c, generator=g)
    kv = torch.randn(sum(lens_k), 2, H, c, generator=g)
    cu_q, cu_k = torch.tensor([0, Lq, 2 * Lq], dtype=torch.int32), torch.tensor([0, 3, 10], dtype=torch.int32)
    out = flash.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, Lq, max(lens_k), softmax_scale=0.3)
    for b in range(2):
        q_b = q[b * Lq : (b + 1) * Lq].transpose(0, 1)  # (H, Lq, c)
        k_b, v_b = kv[cu_k[b] : cu_k[b + 1]].permute(1, 2, 0, 3)  # (H, Lk, c) each
        expected = ((q_b @ k_b.transpose(1, 2)) * 0.3).softmax(-1) @ v_b
        assert torch.allclose(out[b * Lq : (b + 1) * Lq], expected.transpose(0, 1), atol=1e-6)
    dense = flash.flash_attn_func(q.view(2, Lq, H, c), q.view(2, Lq, H, c), q.view(2, Lq, H, c), softmax_scale=0.3)
    assert dense.shape == (2, Lq, H, c)


def test_int8_random_transformer_is_built_quantized_block_by_block():
    from infinity.bench.models import parameter_bytes, random_int8_transformer

    model = random_int8_transformer(TINY)
    fp32 = random_model(lambda: Infinity(TINY), torch.device("cpu"), torch.float32)
    for name, q in model.blocks.named_modules():  # int8 of the same fp32 weights
        if isinstance(q, torch.ao.nn.quantized.dynamic.Linear):
            w = fp32.blocks.get_submodule(name).weight
            assert (q.weight().dequantize() - w).abs().max() <= w.abs().max() / 127
    assert not any(isinstance(m, torch.nn.Linear) for m in model.blocks.modules())  # every Linear of the blocks is int8
    quantized = sum(m.weight.numel() for m in fp32.blocks.modules() if isinstance(m, torch.nn.Linear))
    assert parameter_bytes(model) == parameter_bytes(fp32) - 3 * quantized
    text = model.encode_text(torch.randn(2, 5, TINY.text_channels), torch.tensor([5, 3]))
    logits = model.step(0, None, text, model.new_cache(2, SCHEDULE), SCHEDULE)
    assert logits.shape == (2, 1, TINY.vocab) and torch.isfinite(logits).all()


def test_int8_memory_check_counts_one_byte_per_quantized_weight(monkeypatch):
    from infinity.bench import models

    monkeypatch.setattr(models, "_available_ram", lambda: 2**30)
    with pytest.raises(ValueError, match=r"Infinity-8B in int8 with a T5-XL encoder needs (9|1\d)\.\d GiB"):
        models.build("infinity-8b", torch.device("cpu"), "int8", budget="0.06M")


def test_compare_reports_psnr_and_the_bits_that_differ_per_scale(tmp_path, capsys):
    from infinity.bench.compare import main, save_outputs

    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    bits = [torch.zeros(1, 1, 1, 4, dtype=torch.uint8), torch.zeros(1, 2, 2, 4, dtype=torch.uint8)]
    save_outputs(tmp_path / "a.npz", Image.fromarray(image), bits)
    other_bits = [bits[0], bits[1].clone()]
    other_bits[1][0, 0, 0, :2] = 1  # 2 of the 16 bits of scale 1
    other = image.copy()
    other[0, 0, 0] = 110  # one value off by 10: MSE 100 / 192
    save_outputs(tmp_path / "b.npz", Image.fromarray(other), other_bits)
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--json", str(tmp_path / "d.json")]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["bits_differ_per_scale"] == [0.0, 2 / 16] and result["first_scale_that_differs"] == 1
    assert result["psnr_db"] == pytest.approx(10 * math.log10(255**2 * 192 / 100))
    assert main([str(tmp_path / "a.npz"), str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_bench_outputs_are_the_first_timed_image(tmp_path):
    from infinity.bench.compare import load_outputs

    argv = ["--preset", "shapes-tiny", "--device", "cpu", "--threads", "1", "--runs", "1", "--outputs",
            str(tmp_path / "o.npz"), "--seed", "4"]
    assert bench_cli.main(argv) == 0
    image, bits = load_outputs(tmp_path / "o.npz")
    pipe = build("shapes-tiny", torch.device("cpu")).pipe
    out = pipe(f"{bench_cli.DEFAULT_PROMPT} 0", seed=4, cfg=pipe.defaults.cfg)
    assert np.array_equal(image, np.asarray(out.image)) and all(np.array_equal(a, b.numpy()) for a, b in zip(bits, out.bits))
