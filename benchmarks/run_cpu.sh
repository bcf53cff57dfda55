#!/usr/bin/env bash
# The CPU figures of the README's Performance table, written to benchmarks/results/*.json.
# The Infinity-2B and -8B commands build random weights and a T5-XL-sized encoder: ~15 GB of RAM, minutes of CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p runs  # the images compared across precisions (git-ignored)
python -m infinity.bench --preset embedded --device cpu --threads 1 --runs 20 --previews --json "$out/embedded_cpu_1thread.json"
python -m infinity.bench --preset embedded --device cpu --threads 2 --runs 20 --json "$out/embedded_cpu_2threads.json"
python -m infinity.bench --preset embedded --device cpu --threads 2 --runs 20 --dtype int8 --json "$out/embedded_cpu_int8_2threads.json"
python -m infinity.bench --preset embedded --device cpu --threads 1 --runs 1 --dtype fp32 --outputs runs/embedded_fp32.npz
python -m infinity.bench --preset embedded --device cpu --threads 1 --runs 1 --dtype int8 --outputs runs/embedded_int8.npz
python -m infinity.bench.compare runs/embedded_fp32.npz runs/embedded_int8.npz --json "$out/embedded_int8_vs_fp32.json"
python -m infinity.bench --preset infinity-2b --device cpu --budget 0.06M --runs 1 --threads 2 --dtype fp32 --outputs runs/2b_fp32.npz --json "$out/infinity2b_cpu_fp32_idle.json"
python -m infinity.bench --preset infinity-2b --device cpu --budget 0.06M --runs 1 --threads 2 --dtype int8 --outputs runs/2b_int8.npz --json "$out/infinity2b_cpu_int8.json"
python -m infinity.bench.compare runs/2b_fp32.npz runs/2b_int8.npz --json "$out/infinity2b_int8_vs_fp32.json"
# Infinity-8B with int8 blocks (built one block at a time): ~13 GiB of weights, ~16.5 GiB peak.
python -m infinity.bench --preset infinity-8b --device cpu --budget 0.06M --runs 1 --threads 2 --dtype int8 --json "$out/infinity8b_cpu_int8.json"
# Infinity-125M at its own 256x256 (0.06M), random weights, T5-XL-sized encoder: fp32 and int8 blocks, the drift.
python -m infinity.bench --preset infinity-125m --device cpu --runs 3 --warmup 1 --threads 2 --dtype fp32 --outputs runs/125m_fp32.npz --json "$out/infinity125m_cpu_fp32.json"
python -m infinity.bench --preset infinity-125m --device cpu --runs 3 --warmup 1 --threads 2 --dtype int8 --outputs runs/125m_int8.npz --json "$out/infinity125m_cpu_int8.json"
python -m infinity.bench.compare runs/125m_fp32.npz runs/125m_int8.npz --json "$out/infinity125m_int8_vs_fp32.json"
# What a Space serving it downloads first (estimates from parameter counts).
PYTHONPATH=. python benchmarks/space_sizes.py --json "$out/infinity125m_space_sizes.json"
