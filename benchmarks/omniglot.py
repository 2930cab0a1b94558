"""Omniglot 5-way 1-shot MAML: seconds per meta-iteration and the accuracy of a time-bounded run.

Part 1 times one meta-iteration (32 tasks, 1 support + 15 query images per class, one inner
step, second order, forward + backward + Adam, on one thread) in several ways:

- ``vmap_inner``   the default: support sets adapted under ``vmap``, query pass task by task
- ``loop``         every task one after another (``vectorize_inner=false``)
- ``full_vmap``    support and query passes both under ``vmap`` (the sinusoid path's way)
- ``channels_last`` the default with the convolution weights in channels-last memory format
- ``first_order``  the default with first-order MAML

Part 2 meta-trains the default for ``--minutes`` and scores it on ``--eval-tasks`` held-out
tasks after 0..3 steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/omniglot.py --minutes 5

The data set is read from ``--root`` (default: the shared copy). The last line printed is one
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import Tensor

from metarl.adaptation import adapt
from metarl.config import OmniglotConfig, load_config, with_overrides
from metarl.rngs import Rngs
from metarl.supervised.omniglot import (
    OmniglotLearner,
    cross_entropy,
    evaluate_omniglot,
    maml_losses,
)

CONFIG = "experiments/configs/omniglot_5way1shot.yaml"
Step = Callable[[Rngs], object]


def full_vmap_step(learner: OmniglotLearner) -> Step:
    """One meta-iteration with the query pass under ``vmap`` too (grouped convolutions)."""
    cfg, model, params = learner.config, learner.model, learner.params

    def task_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        adapted = adapt(
            params,
            functools.partial(cross_entropy, model, x=xs, y=ys, fused_bn=False),
            steps=cfg.inner.steps,
            lr=cfg.inner.lr,
            first_order=cfg.inner.first_order,
        )
        return cross_entropy(model, adapted, xq, yq, fused_bn=False)

    def step(rngs: Rngs) -> None:
        batch = learner.sample_batch(rngs)
        learner.optimizer.zero_grad(set_to_none=True)
        losses = torch.func.vmap(task_loss)(
            batch.x_support, batch.y_support, batch.x_query, batch.y_query
        )
        losses.mean().backward()  # type: ignore[no-untyped-call]
        learner.optimizer.step()

    return step


def channels_last_step(learner: OmniglotLearner) -> Step:
    """The default meta-iteration with the convolution weights in channels-last format."""
    cfg = learner.config

    def step(rngs: Rngs) -> None:
        batch = learner.sample_batch(rngs)
        learner.optimizer.zero_grad(set_to_none=True)
        params = {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
            for k, v in learner.params.items()
        }
        losses, _ = maml_losses(learner.model, params, batch, cfg.inner, vectorize=True)
        losses.mean().backward()  # type: ignore[no-untyped-call]
        learner.optimizer.step()

    return step


def time_variants(base: OmniglotConfig, rounds: int) -> dict[str, float]:
    """Median seconds per meta-iteration of each way of computing it.

    The variants take turns, one meta-iteration each per round, so that a load from other work
    on a shared machine falls on all of them alike.
    """
    loop = with_overrides(base, ["vectorize_inner=false"])
    first = with_overrides(base, ["inner.first_order=true"])
    makers: dict[str, tuple[OmniglotConfig, Callable[[OmniglotLearner], Step]]] = {
        "vmap_inner": (base, lambda learner: learner.step),
        "loop": (loop, lambda learner: learner.step),
        "full_vmap": (base, full_vmap_step),
        "channels_last": (base, channels_last_step),
        "first_order": (first, lambda learner: learner.step),
    }
    steps: dict[str, Step] = {}
    rngs: dict[str, Rngs] = {}
    times: dict[str, list[float]] = {name: [] for name in makers}
    for name, (config, make_step) in makers.items():
        rngs[name] = Rngs.from_seed(0)
        steps[name] = make_step(OmniglotLearner(config, rngs[name]))
        steps[name](rngs[name])  # warm-up
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(rngs[name])
            times[name].append(time.perf_counter() - start)
    figures = {name: round(statistics.median(t), 3) for name, t in times.items()}
    for name, seconds in figures.items():
        print(f"{name:>14}: {seconds:.3f} s per meta-iteration", flush=True)
    return figures


def time_bounded_run(config: OmniglotConfig, minutes: float) -> tuple[int, list[dict[str, Any]]]:
    """Meta-train for ``minutes``; returns the iterations done and the held-out accuracy."""
    rngs = Rngs.from_seed(config.seed)
    learner = OmniglotLearner(config, rngs)
    deadline, done = time.perf_counter() + 60.0 * minutes, 0
    while time.perf_counter() < deadline:
        learner.step(rngs)
        done += 1
    return done, evaluate_omniglot([(config, learner.weights())], config.eval)


def training_figures(args: argparse.Namespace) -> dict[str, object]:
    """Part 2: the accuracy that ``args.minutes`` of meta-training reaches."""
    run_cfg = load_config(
        CONFIG,
        [f"data.root={args.root}", f"task.query={args.query}", f"eval.num_tasks={args.eval_tasks}"],
    )
    done, rows = time_bounded_run(run_cfg, args.minutes)
    last = rows[-1]
    print(
        f"{args.minutes} min of training: {done} meta-iterations; accuracy after "
        f"{run_cfg.eval.max_steps} steps on {args.eval_tasks} held-out tasks: "
        f"{100 * last['mean_accuracy']:.2f} +- {100 * last['ci95_accuracy']:.2f} %"
    )
    return {
        "minutes": args.minutes,
        "train_query": args.query,
        "iterations": done,
        "eval_tasks": args.eval_tasks,
        "accuracy_by_step": [round(r["mean_accuracy"], 4) for r in rows],
        "ci95_by_step": [round(r["ci95_accuracy"], 4) for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/omniglot", help="Omniglot data folder")
    parser.add_argument("--rounds", type=int, default=7, help="timed meta-iterations per variant")
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="time-bounded training run (0: none)"
    )
    parser.add_argument("--eval-tasks", type=int, default=600, help="held-out tasks")
    parser.add_argument("--query", type=int, default=15, help="query images per class in training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_config(CONFIG, [f"data.root={args.root}"])
    figures: dict[str, object] = {"benchmark": "omniglot_5way1shot", "torch": torch.__version__}
    figures["threads"] = torch.get_num_threads()
    figures["seconds_per_meta_iteration"] = time_variants(base, args.rounds)
    if args.minutes > 0:
        figures |= training_figures(args)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
