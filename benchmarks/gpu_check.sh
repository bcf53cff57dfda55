#!/usr/bin/env bash
# One command for whoever has a GPU at hand: the GPU path's tests and speed, written as JSON to OUTDIR.
#
#   benchmarks/gpu_check.sh OUTDIR              # one NVIDIA GPU: finishes within 8 minutes
#   benchmarks/gpu_check.sh OUTDIR --dry-run    # any CPU: the same steps on a tiny model (CI runs this)
#
# Steps (each under its own time limit, all under one 470 s budget; a step that fails or runs out of time is
# recorded and the next one runs):
#   env          torch / CUDA / GPU / installed attention libraries
#   tests        the CUDA-relevant tests: tests/test_cuda.py (attention libraries vs SDPA, bf16 vs fp32, pinned
#                offload) and the CPU-side GPU-path tests
#   eager        Infinity-2B, 1024x1024 (1M budget, 13 scales), bf16, random weights: median of 10 after 2 warm-up,
#                peak memory, per-stage times (python -m infinity.bench)
#   125m         Infinity-125M, 256x256 (its 0.06M budget, 7 scales), bf16, random weights: the same figures
#   compile      the same with every block under torch.compile (Inductor), 5 runs after 2 warm-up
#   cudagraphs   the same with torch.compile mode="reduce-overhead" (CUDA graphs)
#   official     the side-by-side with the official code (benchmarks/h100_vs_official.py; needs the official code
#                in third_party/Infinity, see that script)
# OUTDIR/gpu_check.json gathers every step: command, exit code, seconds, and the figures of its own JSON.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && "$2" != "--dry-run" ) ]]; then
    echo "usage: benchmarks/gpu_check.sh OUTDIR [--dry-run]" >&2
    exit 2
fi
out=$1
dry_run=$([[ "${2:-}" == "--dry-run" ]] && echo 1 || echo 0)
mkdir -p "$out"
: > "$out/steps.tsv"
budget_s=470
start=$SECONDS

if [[ $dry_run == 1 ]]; then
    # The tiny model on the CPU, one run each; torch.compile is switched off (Inductor on a CPU takes minutes).
    model=(--preset shapes-tiny --device cpu --threads 1)
    small_model=("${model[@]}")
    eager=(--runs 1 --warmup 0)
    compiled=(--runs 1 --warmup 0)
    tests=(tests/test_cuda.py)  # all skipped without a GPU: proves they collect
    export TORCH_COMPILE_DISABLE=1
else
    model=(--preset infinity-2b --device cuda --dtype bf16 --budget 1M)
    small_model=(--preset infinity-125m --device cuda --dtype bf16)
    eager=(--runs 10 --warmup 2)
    compiled=(--runs 5 --warmup 2)
    tests=(tests/test_cuda.py tests/test_attention.py tests/test_gpu_path.py tests/test_speed_precision.py)
fi

# step NAME LIMIT_S COMMAND...: run it under min(LIMIT_S, what is left of the budget), log to OUTDIR/NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget_s - (SECONDS - start)))
    ((limit > left)) && limit=$left
    local began=$SECONDS rc
    if ((limit < 5)); then
        rc=124
        echo "no time left in the ${budget_s} s budget" > "$out/$name.log"
    else
        echo "== $name (at most ${limit} s): $*"
        timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
        rc=$?
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" "$*" >> "$out/steps.tsv"
    echo "   exit $rc after $((SECONDS - began)) s"
}

step env 30 python - "$out/env.json" <<'EOF'
import importlib.util, json, sys, torch
from infinity.precision import cpu_model
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "cpu": cpu_model(),
        "attention_libraries": {n: importlib.util.find_spec(n) is not None for n in ("flash_attn", "xformers")}}
open(sys.argv[1], "w").write(json.dumps(info, indent=1))
print(info)
EOF
step tests 60 python -m pytest -q -p no:cacheprovider "${tests[@]}" --junitxml "$out/tests.xml"
step eager 80 python -m infinity.bench "${model[@]}" "${eager[@]}" --json "$out/eager.json"
step 125m 40 python -m infinity.bench "${small_model[@]}" "${eager[@]}" --json "$out/125m.json"
step compile 90 python -m infinity.bench "${model[@]}" "${compiled[@]}" --compile default --json "$out/compile.json"
step cudagraphs 90 python -m infinity.bench "${model[@]}" "${compiled[@]}" --compile reduce-overhead \
    --json "$out/cudagraphs.json"
step official 140 python benchmarks/h100_vs_official.py --runs 5 --warmup 1 --workdir "$out/official" \
    --json "$out/official.json"

python - "$out" "$dry_run" "$((SECONDS - start))" <<'EOF'
import json, sys
from pathlib import Path

out, dry_run, seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, took, command = line.split("\t", 3)
    step = {"command": command, "exit_code": int(rc), "seconds": int(took), "timed_out": rc in ("124", "137")}
    log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()
    step["log_tail"] = log[-5:]
    result = out / f"{name}.json"
    if result.is_file() and int(rc) == 0:
        figures = json.loads(result.read_text())
        keep = ("median_s", "peak_memory_bytes", "stages", "dtype", "device_name", "compile", "image_hw", "speedup",
                "official", "ours", "gpu", "torch", "attention_libraries")
        step["result"] = {k: v for k, v in figures.items() if k in keep}
    steps[name] = step
eager = steps.get("eager", {}).get("result", {}).get("median_s")
for name in ("compile", "cudagraphs"):
    median = steps.get(name, {}).get("result", {}).get("median_s")
    if eager and median:
        steps[name]["speedup_over_eager"] = eager / median
summary = {"dry_run": dry_run, "seconds": seconds, "steps": steps}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
print(f"wrote {out / 'gpu_check.json'}: " + ", ".join(f"{n} exit {s['exit_code']}" for n, s in steps.items()))
EOF
