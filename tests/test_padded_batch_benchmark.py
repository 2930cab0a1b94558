"""benchmarks/padded_batch.py measures one training batch of a run: its JSON figures agree with
each other and with the run's budget, and a missing run is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import metarl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "padded_batch.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["iterations=1", "meta_batch_size=3", "episodes_per_task=2", "env.horizon=10"]
TINY += ["policy.hidden_sizes=[8]", "sampler.backend=local"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=ENV
    )


def test_figures_of_a_steps_batch_add_up(tmp_path: Path) -> None:
    for batch in ("steps", "episodes"):
        metarl.train(
            ROOT / "experiments" / "configs" / "navigation2d_oracle.yaml",
            out=tmp_path / batch,
            overrides=[*TINY, f"batch={batch}"],
        )
    done = _run(str(tmp_path / "steps"), str(tmp_path / "episodes"), "--step")
    assert done.returncode == 0, done.stderr[-3000:]
    steps, episodes = json.loads(done.stdout.strip().splitlines()[-1])
    budget = 3 * 2 * 10
    assert steps["batch"] == "steps" and episodes["batch"] == "episodes"
    assert steps["real_steps"] >= budget  # the episodes that ended hold at least the budget
    assert episodes["columns"] == 3 * 2 and episodes["episodes_per_task_max"] == 2
    for r in (steps, episodes):
        assert r["iteration"] == 1 and r["T"] <= 10
        assert r["padded_positions"] == r["T"] * r["columns"] >= r["real_steps"]
        assert r["columns"] == 3 * r["episodes_per_task_max"]
        assert 1 <= r["episodes_per_task_mean"] <= r["episodes_per_task_max"]
        assert r["sample_s"] > 0
        # the learner runs on the real steps, padded per task to the task with the most
        assert r["real_steps"] <= r["learner_rows"] <= r["padded_positions"]
        assert r["learner_rows"] % 3 == 0
        assert r["iteration_s"] > 0


def test_a_missing_run_is_a_one_line_error(tmp_path: Path) -> None:
    done = _run(str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
