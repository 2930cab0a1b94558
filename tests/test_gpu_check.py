"""benchmarks/gpu_check.py runs on the CPU with tiny sizes and reports what a GPU run reports
(its figures are measurements, never asserted on here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
TINY = ["--iters", "1", "--tasks", "2", "--episodes", "2", "--horizon", "8", "--hidden", "8"]
TINY += ["--omniglot-iters", "1", "--meta-batch", "2", "--query", "2", "--filters", "4"]


def test_gpu_check_runs_on_the_cpu_and_prints_its_figures(tmp_path: Path) -> None:
    args = [sys.executable, str(SCRIPT), "--device", "cpu", *TINY]
    args += ["--omniglot-root", str(tmp_path / "none")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["nav/size"] == "2x2xH8"
    for path in ("accelerated", "generic"):
        parts = [figures[f"nav/finite_difference/{path}/{p}"] for p in ("sample_s", "adapt_s")]
        parts.append(figures[f"nav/finite_difference/{path}/trpo_s"])
        assert all(p > 0 for p in parts)
        assert sum(parts) <= figures[f"nav/finite_difference/{path}/total_s"] * 1.01 + 1e-3
    assert figures["omniglot/data"].startswith("synthetic")
    assert figures["omniglot/step_s"] > 0 and figures["omniglot/task"] == "5-way 1-shot, 2 tasks"
