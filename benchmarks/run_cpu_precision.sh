#!/usr/bin/env bash
# The CPU precision figures (issue 28): Infinity-2B at 256x256 in fp32, bf16 and int8 with the same random weights,
# how far the bf16 and int8 images move from fp32, Infinity-8B at 256x256 in int8, and the embedded model's image.
# Results: benchmarks/results/*.json (each records the CPU model and the load average at its start and end).
# Needs ~15 GB of free RAM (the 2B in fp32 with a T5-XL-sized encoder); the 8B in int8 ~14 GB.
# PAUSE_PIDS="1 2 3" pauses those processes (kill -STOP) during each timed command and always resumes them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
scratch=runs/precision
mkdir -p "$scratch"
two_b=(--preset infinity-2b --device cpu --budget 0.06M --runs 1 --threads 2)

paused() {
    local pids=${PAUSE_PIDS:-}
    trap '[[ -n "$pids" ]] && kill -CONT $pids 2>/dev/null || true' RETURN
    [[ -n "$pids" ]] && kill -STOP $pids 2>/dev/null || true
    echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg), $(free -g | awk '/Mem:/ {print $7}') GB available)"
    "$@"
}

for dtype in fp32 int8 bf16; do
    paused python -m infinity.bench "${two_b[@]}" --dtype "$dtype" --json "$out/infinity2b_cpu_$dtype.json" \
        --outputs "$scratch/infinity2b_$dtype.npz"
done
for dtype in int8 bf16; do
    python -m infinity.bench.compare "$scratch/infinity2b_fp32.npz" "$scratch/infinity2b_$dtype.npz" \
        --json "$out/infinity2b_cpu_drift_$dtype.json"
done
paused python -m infinity.bench --preset infinity-8b --device cpu --budget 0.06M --runs 1 --threads 2 --dtype int8 \
    --json "$out/infinity8b_cpu_int8.json"
paused python -m infinity.bench --preset embedded --device cpu --runs 10 --threads 2 --json "$out/embedded_cpu_check.json"
