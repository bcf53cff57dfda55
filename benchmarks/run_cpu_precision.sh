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

# wait_for_gib N: until N GiB of RAM are available (other work on a shared machine comes and goes), at most 10 min.
wait_for_gib() {
    for _ in $(seq 60); do
        (( $(awk '/MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo) >= $1 )) && return 0
        sleep 10
    done
    echo "fewer than $1 GiB available after 10 minutes" >&2
    return 1
}

resume() { [[ -n "${PAUSE_PIDS:-}" ]] && kill -CONT $PAUSE_PIDS 2>/dev/null || true; }
trap resume EXIT  # whatever happens, the paused processes run again

paused() {
    [[ -n "${PAUSE_PIDS:-}" ]] && kill -STOP $PAUSE_PIDS 2>/dev/null || true
    echo "== $* (load $(cut -d' ' -f1-3 /proc/loadavg), $(free -g | awk '/Mem:/ {print $7}') GB available)"
    "$@"
    resume
}

for dtype in fp32 int8 bf16; do
    wait_for_gib "$([[ $dtype == fp32 ]] && echo 15 || echo 10)"
    paused python -m infinity.bench "${two_b[@]}" --dtype "$dtype" --json "$out/infinity2b_cpu_$dtype.json" \
        --outputs "$scratch/infinity2b_$dtype.npz"
done
for dtype in int8 bf16; do
    python -m infinity.bench.compare "$scratch/infinity2b_fp32.npz" "$scratch/infinity2b_$dtype.npz" \
        --json "$out/infinity2b_cpu_drift_$dtype.json"
done
wait_for_gib 15
paused python -m infinity.bench --preset infinity-8b --device cpu --budget 0.06M --runs 1 --threads 2 --dtype int8 \
    --json "$out/infinity8b_cpu_int8.json"
paused python -m infinity.bench --preset embedded --device cpu --runs 10 --threads 2 --json "$out/embedded_cpu_check.json"
