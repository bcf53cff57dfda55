"""benchmarks/gpu_check.sh: its CPU dry run goes through every step and writes the JSON a GPU run would."""
import json
import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["env", "tests", "eager", "125m", "compile", "cudagraphs", "official"]


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and list(summary["steps"]) == STEPS
    steps = summary["steps"]
    assert all(steps[name]["exit_code"] == 0 for name in STEPS[:-1]), {n: s["log_tail"] for n, s in steps.items()}
    assert steps["env"]["result"]["torch"] == torch.__version__
    assert "skipped" in steps["tests"]["log_tail"][-1] and "failed" not in steps["tests"]["log_tail"][-1]
    for name, mode in (("eager", "off"), ("125m", "off"), ("compile", "default"), ("cudagraphs", "reduce-overhead")):
        result = steps[name]["result"]
        assert result["compile"] == mode and result["median_s"] > 0 and result["peak_memory_bytes"] > 0
        assert "--preset shapes-tiny --device cpu" in steps[name]["command"]
    assert steps["compile"]["speedup_over_eager"] > 0
    # Without a GPU the side-by-side refuses with its reason, which the JSON keeps.
    assert steps["official"]["exit_code"] == 1 and "needs a CUDA GPU" in " ".join(steps["official"]["log_tail"])


def test_gpu_check_usage(tmp_path):
    run = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--fast"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 2 and run.stderr.startswith("usage: benchmarks/gpu_check.sh OUTDIR [--dry-run]")

