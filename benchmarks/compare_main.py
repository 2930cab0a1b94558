"""Seconds per MAML-TRPO meta-iteration of this checkout against other checkouts, interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compare_main.py \\
        --baseline-tree /work/wt/pre13 [--baseline-tree ...] \\
        [--methods finite_difference exact gauss_newton] [--iters 5] [--rounds 3] [--seed 0] \\
        [--set policy.hidden_sizes=[64,64] --set policy.activation=tanh]

The measurement of ``benchmarks/maml_trpo_speed.py`` part 1 (Navigation2D at the paper's size:
20 tasks x 20 episodes x horizon 100, Gaussian MLP 2-100-100-2 ReLU, one second-order inner
step, ``learner_threads`` 1, one torch thread), run by one worker process per checkout (this
one and each ``--baseline-tree``, e.g. a ``git worktree`` of an older commit: its own code on
``PYTHONPATH``, this venv's packages), all built from the same seed (``--set``: config
overrides on top of that size, the same for every checkout). Per ``trpo.hvp`` method
the workers take turns, one meta-iteration each, the order rotating every round, so a loaded
machine slows every checkout alike; after one warm-up iteration each, the medians of
``--iters`` iterations of the whole iteration and of its sampling, adaptation and TRPO. Every
timed iteration is the same one, the first of training from the seed (the learner's state and
RNGs restored before each), so every checkout times the same work, whatever rounding sets
their training apart (``--successive``: successive iterations instead). The last line printed
is one JSON object with all figures (and the median line-search backtracks, to show the work
was the same).

``--rounds``: the comparison again with fresh worker processes, the figures the medians over
rounds (``.../rounds`` lists each round's): a process's timings carry a bias of its own of a
few percent (where its buffers happen to lie: BLAS picks kernels by alignment), which
interleaving within one process pair cannot average out.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("finite_difference", "exact", "gauss_newton")
NAV = ["kind=rl", "env.id=metarl/Navigation2D-v0", "env.horizon=100", "meta_batch_size=20"]
NAV += ["episodes_per_task=20", "inner.steps=1", "inner.first_order=false"]
NAV += ["policy.hidden_sizes=[100,100]", "learner_threads=1"]
PARTS = ("sample_s", "adapt_s", "trpo_s", "total_s")


# ------------------------------------------------------------------ the worker (any checkout)


def worker(hvp: str, seed: int, same: bool, overrides: list[str]) -> None:
    """Build the learner of this process's ``metarl``, then one meta-iteration per ``step``
    line on stdin, answering each with a JSON line of its timings. ``same``: every iteration
    after the first starts from the learner's state and RNGs after the first (the same work
    every time)."""
    import torch

    import metarl
    from metarl.config import load_config
    from metarl.rngs import Rngs

    try:
        from metarl.rl.learners import MAMLTRPOLearner
    except ImportError:  # the layout before issue 13B
        from metarl.rl import MAMLTRPOLearner  # type: ignore[attr-defined,no-redef]

    torch.set_num_threads(1)
    config = load_config(None, [*NAV, f"trpo.hvp={hvp}", f"seed={seed}", *overrides])
    rngs = Rngs.from_seed(seed)
    learner = MAMLTRPOLearner(config, rngs)
    print(json.dumps({"ready": str(Path(metarl.__file__).parent)}), flush=True)
    start: tuple[Any, Any] | None = None
    try:
        for line in sys.stdin:
            if line.strip() != "step":
                break
            if same and start is not None:
                learner.load_state_dict(start[0])
                rngs.restore(start[1])
            elif same:
                start = (learner.state_dict(), rngs.state())
            clock = time.perf_counter()
            stats = learner.step(rngs)
            stats["time/total_s"] = time.perf_counter() - clock
            got = {k: stats[f"time/{k}"] for k in PARTS}
            got["backtracks"] = stats.get("trpo/backtracks", -1.0)
            print(json.dumps(got), flush=True)
    finally:
        learner.close()


# ------------------------------------------------------------------ the driver


class Worker:
    """A worker process on the checkout ``tree``."""

    def __init__(
        self, name: str, tree: Path, hvp: str, seed: int, same: bool, overrides: list[str]
    ) -> None:
        self.name = name
        self.times: list[dict[str, float]] = []
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        args = [sys.executable, str(Path(__file__).resolve()), "--worker", hvp, "--seed", str(seed)]
        args += [] if same else ["--successive"]
        args += [f"--set={o}" for o in overrides]
        self.proc = subprocess.Popen(
            args, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        ready = self._read()
        if Path(ready["ready"]).resolve() != (tree / "metarl").resolve():
            raise RuntimeError(f"{name}: imported metarl from {ready['ready']}, not {tree}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended (exit {self.proc.wait()})")
        got: dict[str, Any] = json.loads(line)
        return got

    def step(self, keep: bool) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        got = self._read()
        if keep:
            self.times.append(got)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def compare(
    trees: dict[str, Path], hvp: str, iters: int, seed: int, same: bool, overrides: list[str]
) -> dict[str, float]:
    """Medians per checkout for one method, iterations interleaved (order rotating)."""
    workers = [Worker(name, tree, hvp, seed, same, overrides) for name, tree in trees.items()]
    try:
        for i in range(iters + 1):
            shift = i % len(workers)
            for w in workers[shift:] + workers[:shift]:
                w.step(keep=i > 0)
    finally:
        for w in workers:
            w.close()
    out: dict[str, float] = {}
    for w in workers:
        for part in (*PARTS, "backtracks"):
            out[f"{hvp}/{w.name}/{part}"] = statistics.median(t[part] for t in w.times)
    for w in workers[1:]:
        out[f"{hvp}/{w.name}/ratio_total"] = (
            out[f"{hvp}/{w.name}/total_s"] / out[f"{hvp}/{workers[0].name}/total_s"]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-tree", action="append", type=Path, default=[])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per checkout")
    parser.add_argument("--rounds", type=int, default=3, help="with fresh worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--successive", action="store_true",
        help="time successive training iterations (default: the first one, again and again)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="a config override for every checkout, after the paper's size "
        "(e.g. policy.hidden_sizes=[64,64] policy.activation=tanh)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed, same=not args.successive, overrides=args.overrides)
        return
    if not args.baseline_tree:
        parser.error("give at least one --baseline-tree (e.g. a git worktree of an old commit)")
    trees = {"current": ROOT}
    for tree in args.baseline_tree:
        trees[tree.resolve().name] = tree.resolve()
    figures: dict[str, Any] = {"trees": {k: str(v) for k, v in trees.items()}}
    rounds: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for hvp in args.methods:
            got = compare(trees, hvp, args.iters, args.seed, not args.successive, args.overrides)
            for key, value in got.items():
                print(f"round {r}: {key:45s} {value:9.3f}", flush=True)
                rounds.setdefault(key, []).append(value)
    for key, values in rounds.items():
        figures[key] = statistics.median(values)
        figures[f"{key}/rounds"] = [round(v, 4) for v in values]
        print(f"{key:45s} {figures[key]:9.3f}  {figures[f'{key}/rounds']}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
