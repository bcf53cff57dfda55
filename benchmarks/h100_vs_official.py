"""Infinity-2B on one GPU (an H100 for the README's figures): this implementation against the official one,
side by side, with the same random weights.

    git clone https://github.com/FoundationVision/Infinity third_party/Infinity     # git-ignored, never committed
    git -C third_party/Infinity checkout 4c27bbb54a9918847a2fe56b0fbe31a8523791a1
    pip install timm einops imageio pytz torchvision                               # what the official code imports
    python benchmarks/h100_vs_official.py --runs 10 --json runs/h100_vs_official.json

What is compared: one 1024x1024 image (1:1, 1M budget, 13 scales), batch 1, classifier-free guidance on logits
with the same cfg / tau / top-k / top-p / seed, prompt to uint8 image on the host, text encoding included.
Both packages are named `infinity`, so each side runs in its own process (`--worker official|ours`), which also
keeps their GPU memory apart:
  1. official: builds the official VAE (d32 BSQ), the official Infinity-2B (random init, blocks in bf16 under
     bf16 autocast, as tools/run_infinity.py loads it) and a Flan-T5-XL-sized T5 encoder with random weights
     (fp16); saves all three state dicts and the prompt's token ids to --workdir; times `encode_prompt` +
     `autoregressive_infer_cfg` (cfg_insertion_layer [0], vae_type 32) as tools/run_infinity.py:gen_one_img does.
  2. ours: loads those files through infinity/checkpoints.py (the official key mapping), the transformer in bf16,
     the same T5 weights and token ids, and times `InfinityPipeline.stream` + the PIL conversion with the harness
     of `python -m infinity.bench`.
Each reports the median over --runs after --warmup runs and torch.cuda.max_memory_allocated; this process
prints both, their ratio, and the mean difference of the two final images (the same weights and seed, but bf16
kernels differ, so the images agree closely but not exactly). The official code needs flash_attn; where it is
not installed, the worker gives it a stand-in module that runs the same attention through torch's batched SDPA
(padded, with a key mask) and says so in the results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_COMMIT = "4c27bbb54a9918847a2fe56b0fbe31a8523791a1"
OFFICIAL_IMPORTS = ("timm", "einops", "imageio", "pytz", "torchvision", "transformers")
T5_XL = dict(d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64, vocab_size=32128,
             feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
TEXT_MAXLEN = 512  # the official T5 path pads every prompt to 512 tokens; ours runs the prompt's own
FILES = {"vae": "vae.pth", "transformer": "transformer.pth", "t5": "t5.pth", "tokens": "tokens.pt"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/h100_vs_official.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-dir", type=Path, default=REPO / "third_party" / "Infinity")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "h100_vs_official",
                        help="where the shared random weights and each side's results go")
    parser.add_argument("--budget", choices=["0.06M", "0.25M", "0.60M", "1M"], default="1M")
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=900)
    parser.add_argument("--top-p", type=float, default=0.97)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="random T5 tokens of the prompt (then padding)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--keep-weights", action="store_true", help="keep the saved random weights (~8 GB)")
    parser.add_argument("--json", type=Path, default=None, help="write the comparison here")
    parser.add_argument("--worker", choices=["official", "ours"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"need --runs >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    if not 1 <= args.prompt_tokens <= TEXT_MAXLEN:
        parser.error(f"--prompt-tokens must be in [1, {TEXT_MAXLEN}], got {args.prompt_tokens}")
    return args


def check_machine(args: argparse.Namespace) -> None:
    """SystemExit with the reason when this machine cannot run the comparison."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "h100_vs_official: needs a CUDA GPU (an H100 for the README's figures), and torch.cuda.is_available() "
            "is False here. On a CPU-only machine use `python -m infinity.bench --device cpu` instead."
        )
    if not (args.official_dir / "infinity" / "models" / "infinity.py").is_file():
        raise SystemExit(
            f"h100_vs_official: the official code is not in {args.official_dir}. Fetch it (never commit it):\n"
            f"  git clone https://github.com/FoundationVision/Infinity {args.official_dir}\n"
            f"  git -C {args.official_dir} checkout {OFFICIAL_COMMIT}"
        )


def timed_runs(generate, runs: int, warmup: int) -> dict:
    """Median seconds of `generate()` (synchronised) over `runs` after `warmup`, and the peak allocated memory."""
    for _ in range(warmup):
        generate()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        image = generate()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "runs_s": seconds,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(), "image": image}


# ---- the official side ----


def _flash_attn_stand_in() -> types.ModuleType:
    """`flash_attn` for the official code where the real one is not installed: the two kernels it calls, on
    torch's scaled_dot_product_attention (batched; varlen keys padded and masked)."""
    F = torch.nn.functional

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):  # (B, L, H, c) each
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             scale=softmax_scale, is_causal=causal)
        return out.transpose(1, 2)

    def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                        dropout_p=0.0, softmax_scale=None, **_):
        # q (sum lq, H, c), kv (sum lk, 2, H, c) packed by the cumulative lengths -> (sum lq, H, c)
        B = cu_seqlens_k.numel() - 1
        lens_q, lens_k = cu_seqlens_q.diff(), cu_seqlens_k.diff()
        keep_q = torch.arange(max_seqlen_q, device=q.device)[None, :] < lens_q[:, None]  # (B, Lq)
        keep_k = torch.arange(max_seqlen_k, device=q.device)[None, :] < lens_k[:, None]  # (B, Lk)
        q_BLHc = q.new_zeros(B, max_seqlen_q, *q.shape[1:])
        kv_BL2Hc = kv.new_zeros(B, max_seqlen_k, *kv.shape[1:])
        q_BLHc[keep_q], kv_BL2Hc[keep_k] = q, kv
        k_BHLc, v_BHLc = kv_BL2Hc.permute(2, 0, 3, 1, 4).unbind(0)
        out_BHLc = F.scaled_dot_product_attention(q_BLHc.transpose(1, 2), k_BHLc, v_BHLc,
                                                  attn_mask=keep_k[:, None, None, :], scale=softmax_scale)
        return out_BHLc.transpose(1, 2)[keep_q]

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_kvpacked_func = flash_attn_func, flash_attn_varlen_kvpacked_func
    return module


def official_worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(args.official_dir))
    os.chdir(args.official_dir)
    missing = [name for name in OFFICIAL_IMPORTS if _missing(name)]
    if missing:
        raise SystemExit(f"the official code needs: pip install {' '.join(missing)}")
    try:
        import flash_attn  # noqa: F401
        attention = "flash_attn (installed)"
    except ImportError:
        sys.modules["flash_attn"] = _flash_attn_stand_in()
        attention = "flash_attn not installed: stand-in on torch SDPA (batched, padded varlen keys)"
    import infinity
    from infinity.models.bsq_vae.vae import vae_model
    from infinity.models.infinity import Infinity as OfficialInfinity
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w
    from transformers import T5Config, T5EncoderModel

    if not Path(infinity.__file__).resolve().is_relative_to(args.official_dir.resolve()):
        raise SystemExit(f"`import infinity` found {infinity.__file__}, not the official code in {args.official_dir}")
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    vae = vae_model(None, "dynamic", 32, 2**32, test_mode=True, patch_size=16,
                    encoder_ch_mult=[1, 2, 4, 4, 4], decoder_ch_mult=[1, 2, 4, 4, 4]).to(device)
    with torch.no_grad():  # the constructor arguments of tools/run_infinity.py:load_infinity for infinity_2b
        model = OfficialInfinity(
            vae_local=vae, text_channels=2048, text_maxlen=TEXT_MAXLEN, shared_aln=True, raw_scale_schedule=None,
            checkpointing="full-block", customized_flash_attn=False, fused_norm=True, pad_to_multiplier=128,
            use_flex_attn=False, add_lvl_embeding_only_first_block=1, use_bit_label=1, rope2d_each_sa_layer=1,
            rope2d_normalized_by_hw=2, pn=args.budget, apply_spatial_patchify=0, inference_mode=True,
            train_h_div_w_list=[1.0], depth=32, embed_dim=2048, num_heads=16, drop_path_rate=0.1, mlp_ratio=4,
            block_chunks=8,
        ).to(device)
        for block in model.unregistered_blocks:
            block.bfloat16()
    model.eval().requires_grad_(False)
    model.rng = torch.Generator(device=device)
    t5 = T5EncoderModel(T5Config(**T5_XL)).to(device, torch.float16).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(2, T5_XL["vocab_size"], (args.prompt_tokens,), generator=g)
    ids[-1] = 1  # EOS

    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.save({"vae": vae.state_dict()}, args.workdir / FILES["vae"])
    torch.save(model.state_dict(), args.workdir / FILES["transformer"])
    torch.save(t5.state_dict(), args.workdir / FILES["t5"])
    torch.save(ids, args.workdir / FILES["tokens"])

    schedule = [(1, h, w) for _, h, w in dynamic_resolution_h_w[1.0][args.budget]["scales"]]
    K = len(schedule)
    input_ids = torch.zeros(1, TEXT_MAXLEN, dtype=torch.long)
    input_ids[0, : len(ids)] = ids
    mask = (torch.arange(TEXT_MAXLEN) < len(ids)).long()[None]

    @torch.no_grad()
    def generate():
        # tools/run_infinity.py:gen_one_img: T5 features of the valid tokens, packed, then the sampler under autocast
        ids_d, mask_d = input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        features = t5(input_ids=ids_d, attention_mask=mask_d)["last_hidden_state"].float()
        lens = mask_d.sum(dim=-1).tolist()
        cu_seqlens_k = torch.nn.functional.pad(mask_d.sum(dim=-1).to(torch.int32).cumsum_(0), (1, 0))
        kv_compact = torch.cat([f[:n] for n, f in zip(lens, features.unbind(0))])
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=True):
            _, _, images = model.autoregressive_infer_cfg(
                vae=vae, scale_schedule=schedule, label_B_or_BLT=(kv_compact, lens, cu_seqlens_k, max(lens)),
                g_seed=args.seed, B=1, negative_label_B_or_BLT=None, cfg_list=[args.cfg] * K,
                tau_list=[args.tau] * K, top_k=args.top_k, top_p=args.top_p, returns_vemb=1,
                cfg_insertion_layer=[0], vae_type=32, ret_img=True, inference_mode=True,
            )
        return images[0].flip(dims=(2,)).cpu().numpy()  # BGR -> RGB, on the host like our PIL image

    result = timed_runs(generate, args.runs, args.warmup)
    result.update(attention=attention, scales=[[h, w] for _, h, w in schedule])
    return result


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


# ---- our side ----


def ours_worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    import numpy as np
    from transformers import T5Config, T5EncoderModel

    from infinity.bench.harness import benchmark
    from infinity.checkpoints import load_official_tokenizer, load_official_transformer, read_torch_weights
    from infinity.options import SamplingDefaults
    from infinity.pipeline import InfinityPipeline
    from infinity.schedules import get_schedule
    from infinity.text import T5TextEncoder
    from infinity.transformer.blocks import attention_backend

    device = torch.device("cuda")
    tokenizer = load_official_tokenizer(args.workdir / FILES["vae"], "infinity-vae-d32reg")
    transformer = load_official_transformer(args.workdir / FILES["transformer"], "infinity-2b", torch.bfloat16)
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**T5_XL))
    t5.load_state_dict(read_torch_weights(args.workdir / FILES["t5"]), assign=True)
    ids = torch.load(args.workdir / FILES["tokens"], weights_only=True)

    def tokenize(prompts, max_length, padding, truncation=True, return_tensors="pt"):  # the saved ids, as asked
        input_ids = torch.zeros(len(prompts), max_length if padding == "max_length" else len(ids), dtype=torch.long)
        input_ids[:, : len(ids)] = ids
        return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}

    encoder = T5TextEncoder(tokenize, t5.to(device, torch.float16))
    defaults = SamplingDefaults(cfg=args.cfg, tau=args.tau, top_k=args.top_k, top_p=args.top_p)
    schedule = get_schedule("1:1", args.budget)
    pipe = InfinityPipeline(tokenizer, transformer, encoder, {"1:1": schedule}, defaults, "infinity-2b", device,
                            torch.bfloat16)
    timings, memory = benchmark(pipe, "random tokens", "1:1", args.seed, args.cfg, False, args.runs, args.warmup)
    image = next(e for e in pipe.stream("random tokens", seed=args.seed, preview=False) if e.is_last).image_B3HW
    return {
        "median_s": timings.median_s, "runs_s": [r.total_s for r in timings.runs], "stages": timings.stage_medians(),
        "peak_memory_bytes": memory.peak_bytes, "attention": f"our attention(): backend {attention_backend()}",
        "scales": [list(hw) for hw in schedule.scales],
        "image": ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
        .numpy().astype(np.uint8),
    }


# ---- both, side by side ----


def run_worker(args: argparse.Namespace, side: str, argv: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(args.official_dir if side == "official" else REPO))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--worker", side], check=True, env=env)
    return json.loads((args.workdir / f"{side}.json").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_machine(args)
    args.workdir = args.workdir.resolve()
    args.official_dir = args.official_dir.resolve()
    if args.worker is not None:
        import numpy as np

        result = (official_worker if args.worker == "official" else ours_worker)(args)
        np.save(args.workdir / f"{args.worker}_image.npy", result.pop("image"))
        result["device"] = torch.cuda.get_device_name()
        (args.workdir / f"{args.worker}.json").write_text(json.dumps(result, indent=1))
        return 0

    import numpy as np

    args.workdir.mkdir(parents=True, exist_ok=True)
    official = run_worker(args, "official", argv)
    ours = run_worker(args, "ours", argv)
    if official["scales"] != ours["scales"]:
        raise SystemExit(f"the two sides ran different schedules: {official['scales']} vs {ours['scales']}")
    a, b = (np.load(args.workdir / f"{side}_image.npy").astype(np.float64) for side in ("official", "ours"))
    comparison = {
        "device": official["device"], "budget": args.budget, "scales": ours["scales"], "cfg": args.cfg, "tau": args.tau,
        "top_k": args.top_k, "top_p": args.top_p, "runs": args.runs, "warmup": args.warmup,
        "official": official, "ours": ours, "speedup": official["median_s"] / ours["median_s"],
        "image_mean_abs_diff": float(np.abs(a - b).mean()) if a.shape == b.shape else None,
    }
    gib = 2**30
    print(f"Infinity-2B, 1:1 {args.budget}, batch 1, cfg {args.cfg}, {official['device']}, median of {args.runs} runs")
    print(f"{'':<10}{'median s':>10}{'peak GiB':>10}  attention")
    for side, r in (("official", official), ("ours", ours)):
        print(f"{side:<10}{r['median_s']:>10.3f}{r['peak_memory_bytes'] / gib:>10.2f}  {r['attention']}")
    print(f"ours is {comparison['speedup']:.2f}x the official speed; mean |image difference| "
          f"{comparison['image_mean_abs_diff']} (0-255)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(comparison, indent=1))
    if not args.keep_weights:
        for name in FILES.values():
            (args.workdir / name).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
