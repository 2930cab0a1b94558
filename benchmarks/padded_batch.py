"""Real env steps against padded positions of one meta-training batch, and its sampling time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/padded_batch.py RUN_DIR [RUN_DIR ...]
        [--seed 1] [--step]

For each RL run, samples one training batch of fresh tasks with the run's last weights and its
own config (``batch: steps`` or ``episodes``, the sampler backend of the config) and prints the
batch's ``[T, N]`` shape, the real env steps it holds, the episodes per task, the rows the
learner's losses and curvature products run on (``K x R``: every task's real steps, padded to
the task with the most; :func:`metarl.rl.losses.task_rows`), and how long sampling took. With
``--step``, also the seconds of one whole training iteration from the run's last state (for a
MAML run: the train batch, the inner steps, the valid batch of the adapted policies and the
outer step), and of its sampling and outer step. Last, one JSON object with all figures. With
``batch: steps`` a task whose episodes end early gets more, shorter ones and the ``[T, N]``
layout grows (docs/performance.md, "Batches of many short episodes").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from typing import Any

import torch

from metarl.rl.learners import PolicyLearner, make_rl_learner
from metarl.rl.losses import task_rows
from metarl.rngs import Rngs
from metarl.trainer import CheckpointError, load_checkpoint


def measure(run_dir: str, seed: int, step: bool) -> dict[str, Any]:
    ckpt = load_checkpoint(run_dir)
    if getattr(ckpt.config, "kind", None) != "rl":
        raise SystemExit(f"error: {run_dir!r} is not an RL run")
    learner = PolicyLearner(ckpt.config, Rngs.from_seed(0))
    learner.params = {k: v.clone() for k, v in ckpt.learner["params"].items()}
    rngs = Rngs.from_seed(seed)
    clock = time.perf_counter()
    _, batch = learner.sample_with_theta(rngs)
    seconds = time.perf_counter() - clock
    horizon, columns = batch.mask.shape
    real = int(batch.lengths.sum())
    counts = batch.episode_counts()
    rows = task_rows(batch, torch.zeros_like(batch.rewards)).mask.numel()
    result = {
        "run": run_dir,
        "iteration": ckpt.iteration,
        "batch": ckpt.config.batch,
        "T": horizon,
        "columns": columns,
        "real_steps": real,
        "padded_positions": horizon * columns,
        "padding_factor": round(horizon * columns / real, 2),
        "mean_episode_length": round(real / int((batch.lengths > 0).sum()), 1),
        "episodes_per_task_mean": round(float(counts.float().mean()), 1),
        "episodes_per_task_max": int(counts.max()),
        "learner_rows": rows,
        "sample_s": seconds,  # unrounded: a tiny batch samples in milliseconds
    }
    if step:
        result.update(time_iteration(ckpt.config, ckpt.learner, seed))
    return result


def time_iteration(config: Any, state: dict[str, Any], seed: int) -> dict[str, float]:
    """Seconds of one training iteration from the run's last learner state."""
    learner = make_rl_learner(config, Rngs.from_seed(0))
    try:
        learner.load_state_dict(state)
        clock = time.perf_counter()
        stats = learner.step(Rngs.from_seed(seed))
        seconds = time.perf_counter() - clock
    finally:
        learner.close()
    parts = {k.removeprefix("time/"): v for k, v in stats.items() if k.startswith("time/")}
    return {"iteration_s": seconds, **parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--seed", type=int, default=1, help="seed of the tasks and episodes")
    parser.add_argument(
        "--step", action="store_true", help="also time one training iteration from the run's state"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        try:
            r = measure(run, args.seed, args.step)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        results.append(r)
        print(
            f"{run} (iteration {r['iteration']}, batch: {r['batch']}): [T, N] = "
            f"[{r['T']}, {r['columns']}], {r['real_steps']} real env steps, "
            f"{r['padded_positions']} positions ({r['padding_factor']}x); episodes per task "
            f"{r['episodes_per_task_mean']} (max {r['episodes_per_task_max']}), mean length "
            f"{r['mean_episode_length']}; the learner's rows {r['learner_rows']}; sampled in "
            f"{r['sample_s']:.3g} s"
            + (f"; one training iteration {r['iteration_s']:.3g} s" if args.step else "")
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
