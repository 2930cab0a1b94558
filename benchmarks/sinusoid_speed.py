"""Milliseconds per sinusoid meta-iteration: metarl's vmapped path vs a Python loop over tasks.

Both do the same work (25 tasks, K=10 support + 10 query points, one inner step, second order,
forward + backward + Adam) with the paper's 1-40-40-1 ReLU net, on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sinusoid_speed.py

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from metarl.config import load_config
from metarl.rngs import Rngs
from metarl.supervised.networks import apply
from metarl.supervised.sinusoid import SinusoidLearner, mse, sample_sinusoid_tasks


def time_ms(fn: Callable[[], object], *, warmup: int, iters: int, repeats: int) -> float:
    """Best-of-``repeats`` mean milliseconds per call."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters * 1e3)
    return best


def loop_step(learner: SinusoidLearner, rngs: Rngs) -> Callable[[], None]:
    """The reference: a Python loop over tasks with autograd.grad(create_graph=True)."""
    cfg, model, params = learner.config, learner.model, learner.params
    optimizer = torch.optim.Adam(params.values(), lr=cfg.meta_lr)
    names = list(params)

    def step() -> None:
        batch = sample_sinusoid_tasks(
            cfg.task, num_tasks=cfg.meta_batch_size, k_support=10, k_query=10, generator=rngs.torch
        )
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros(())
        for i in range(cfg.meta_batch_size):
            inner = mse(model, params, batch.x_support[i], batch.y_support[i])
            grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True)
            adapted = {n: params[n] - cfg.inner.lr * g for n, g in zip(names, grads, strict=True)}
            total = (
                total + ((apply(model, adapted, batch.x_query[i]) - batch.y_query[i]) ** 2).mean()
            )
        (total / cfg.meta_batch_size).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["kind=sinusoid"])
    rngs = Rngs.from_seed(0)
    learner = SinusoidLearner(cfg, rngs)
    vmapped = time_ms(lambda: learner.step(rngs), warmup=20, iters=args.iters, repeats=args.repeats)
    loop = time_ms(
        loop_step(SinusoidLearner(cfg, rngs), rngs),
        warmup=5,
        iters=max(args.iters // 5, 10),
        repeats=args.repeats,
    )
    figures = {
        "benchmark": "sinusoid_meta_iteration",
        "tasks": cfg.meta_batch_size,
        "k": cfg.task.k_support,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "metarl_vmap_ms": round(vmapped, 3),
        "python_loop_ms": round(loop, 3),
        "speedup": round(loop / vmapped, 2),
    }
    print(f"metarl vmapped meta-iteration: {vmapped:.3f} ms")
    print(f"python loop over tasks:        {loop:.3f} ms")
    print(f"speedup:                       {loop / vmapped:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
