"""A short check of the learner on a GPU (under 5 minutes on one; runs on a CPU too).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_check.py [--device cuda]
        [--iters 5] [--tasks 20] [--episodes 20] [--horizon 100] [--hidden 100 100]
        [--hvp finite_difference] [--paths accelerated generic]
        [--omniglot-root ../shared/data/omniglot] [--omniglot-iters 5] [--meta-batch 32]
        [--ways 5] [--shots 1] [--query 15] [--filters 64] [--skip-omniglot]

1. Navigation2D at the paper's size by default (20 tasks x 20 episodes x horizon 100, policy
   2-100-100-2 ReLU, one second-order inner step at lr 0.5, ``trpo.hvp`` finite differences):
   ``MAMLTRPOLearner.step`` on ``--device``, the envs stepping on the CPU; after one warm-up
   iteration, the median over ``--iters`` iterations of the wall seconds of sampling (with the
   weight and episode transfers), adaptation and TRPO, and of the whole iteration. With
   ``--paths accelerated generic`` both ``trpo.accelerator`` settings, iterations interleaved.
2. Omniglot 5-way 1-shot (the paper's conv net, 32 tasks, one second-order inner step, Adam):
   seconds per meta-iteration (median over ``--omniglot-iters`` after a warm-up). The data set
   is read from ``--omniglot-root``; where it is missing, a small synthetic set in the same
   layout stands in (the time per iteration depends on the batch's shape, not on the
   characters), and the JSON says so.

The device's kernels run asynchronously: every timing waits for them. The last line printed is
one JSON object with all figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from metarl.config import load_config
from metarl.devices import resolve_device, synchronize
from metarl.rl.learners import MAMLTRPOLearner
from metarl.rngs import Rngs
from metarl.supervised.omniglot import OmniglotLearner

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_CONFIG = ROOT / "experiments" / "configs" / "omniglot_5way1shot.yaml"
OMNIGLOT_ROOTS = (ROOT.parent / "shared/data/omniglot", ROOT / "shared/data/omniglot")
"""Where the data set is looked for without ``--omniglot-root``: the shared copy beside the
checkout (the configs' ``../shared/data/omniglot``), or inside it."""


def navigation(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per Navigation2D meta-iteration and its parts, per accelerator path."""
    base = ["kind=rl", "env.id=metarl/Navigation2D-v0", f"env.horizon={args.horizon}"]
    base += [f"meta_batch_size={args.tasks}", f"episodes_per_task={args.episodes}"]
    base += [f"policy.hidden_sizes={list(args.hidden)}", f"trpo.hvp={args.hvp}"]
    base += [f"device={args.device}", f"seed={args.seed}"]
    learners: dict[str, tuple[MAMLTRPOLearner, Rngs]] = {}
    rows: dict[str, list[dict[str, float]]] = {}
    for path in args.paths:
        config = load_config(None, [*base, f"trpo.accelerator={path == 'accelerated'}"])
        rngs = Rngs.from_seed(args.seed)
        learners[path], rows[path] = (MAMLTRPOLearner(config, rngs), rngs), []
    try:
        for i in range(args.iters + 1):
            for path, (learner, rngs) in learners.items():
                clock = time.perf_counter()
                stats = learner.step(rngs)
                synchronize(learner.device)
                stats["time/total_s"] = time.perf_counter() - clock
                if i > 0:
                    rows[path].append(stats)
    finally:
        for learner, _ in learners.values():
            learner.close()
    out: dict[str, Any] = {"nav/size": f"{args.tasks}x{args.episodes}xH{args.horizon}"}
    for path, got in rows.items():
        for part in ("sample_s", "adapt_s", "trpo_s", "total_s"):
            out[f"nav/{args.hvp}/{path}/{part}"] = statistics.median(r[f"time/{part}"] for r in got)
        out[f"nav/{args.hvp}/{path}/post_adapt_return"] = got[-1]["post_adapt_return"]
    return out


def synthetic_omniglot(root: Path, characters: int = 40, drawings: int = 20) -> Path:
    """A small Omniglot in the real layout (random blotches), for timing without the data."""
    rng = np.random.default_rng(0)
    counts = {"images_background": characters - characters // 4}
    counts["images_evaluation"] = characters // 4
    for split, count in counts.items():
        for c in range(count):
            folder = root / split / "Synthetic" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawings):
                pixels = rng.random((105, 105)) > 0.2
                Image.fromarray(pixels).save(folder / f"{c:04d}_{d + 1:02d}.png")
    return root


def omniglot(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per Omniglot meta-iteration on ``--device``."""
    found = [args.omniglot_root] if args.omniglot_root else OMNIGLOT_ROOTS
    root = next((Path(r).expanduser() for r in found if Path(r).expanduser().is_dir()), None)
    note = "real"
    with tempfile.TemporaryDirectory() as tmp:
        train = 1200
        if root is None:
            root, note, train = synthetic_omniglot(Path(tmp)), "synthetic (no data found)", 30
        sets = [f"data.root={root}", f"data.train_characters={train}", f"device={args.device}"]
        sets += [f"meta_batch_size={args.meta_batch}", f"task.ways={args.ways}"]
        sets += [f"task.shots={args.shots}", f"task.query={args.query}"]
        sets += [f"model.hidden={args.filters}", f"seed={args.seed}"]
        config = load_config(OMNIGLOT_CONFIG, sets)
        rngs = Rngs.from_seed(args.seed)
        learner = OmniglotLearner(config, rngs)
        times = []
        for i in range(args.omniglot_iters + 1):
            clock = time.perf_counter()
            stats = learner.step(rngs)
            synchronize(learner.device)
            if i > 0:
                times.append(time.perf_counter() - clock)
    task = f"{args.ways}-way {args.shots}-shot, {args.meta_batch} tasks"
    return {
        "omniglot/task": task,
        "omniglot/data": note,
        "omniglot/step_s": statistics.median(times),
        "omniglot/post_adapt_query_loss": stats["post_adapt_query_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=5, help="timed Navigation2D iterations")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--hidden", type=int, nargs="+", default=[100, 100])
    parser.add_argument("--hvp", default="finite_difference")
    parser.add_argument(
        "--paths", nargs="+", default=["accelerated", "generic"],
        choices=["accelerated", "generic"], help="trpo.accelerator true / false",
    )  # fmt: skip
    parser.add_argument(
        "--omniglot-root", help="the data set (default: ../shared/data/omniglot, shared/...)"
    )
    parser.add_argument("--omniglot-iters", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--skip-omniglot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    figures: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(device)
    started = time.perf_counter()
    figures.update(navigation(args))
    if not args.skip_omniglot:
        figures.update(omniglot(args))
    figures["wall_s"] = time.perf_counter() - started
    for key, value in figures.items():
        print(f"{key:50s} {value:.4f}" if isinstance(value, float) else f"{key:50s} {value}")
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
