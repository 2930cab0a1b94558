"""HalfCheetahVel sampling rate per sampler backend and worker count, and Ray's overhead.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_scaling.py [--tasks 40]
        [--episodes 20] [--horizon 200] [--reps 2] [--workers 1 2] [--address ADDR]

For each backend - ``local`` (the learner steps every sub-env itself), ``processes`` and
``ray`` at each ``--workers`` count - one ``sample(...)`` call of tasks x episodes x horizon
MuJoCo steps with the paper's policy (2 x 100 ReLU) after a warm-up call (workers and envs
built, Ray started): the median over ``--reps`` of env steps per second. Beside them: raw
``HalfCheetah-v5`` stepping (one env, random actions, no policy, best of five windows) in the
same run, and the fixed cost of one call (a 1-step rollout of 2 tasks x 1 episode) per
backend. Ray's overhead is its rate against ``processes`` at the same worker count. ``ray``
starts a local Ray on 127.0.0.1 with as many CPUs as the machine has, or joins ``--address``.

All backends give the same episodes for the same seeds (tests/test_ray_sampler.py); the last
line printed is one JSON object with all figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch
from maml_trpo_speed import raw_cheetah_rate  # this folder is sys.path[0] for a script

from metarl.config import load_config
from metarl.rl.learners import make_policy, task_env
from metarl.rl.sampling import make_sampler
from metarl.rl.sampling.base import EpisodeSampler
from metarl.rl.sampling.envs import make_env

ENV_ID = "metarl/HalfCheetahVel-v0"


def build(backend: str, workers: int, tasks: int, episodes: int, horizon: int, address: Any) -> Any:
    overrides = ["kind=rl", f"env.id={ENV_ID}", f"sampler.backend={backend}"]
    overrides += [f"sampler.num_workers={workers}", f"env.horizon={horizon}"]
    if address:
        overrides.append(f"sampler.ray_address={address}")
    config = load_config(None, overrides)
    sampler = make_sampler(
        config.sampler, env_id=ENV_ID, num_tasks=tasks, episodes_per_task=episodes,
        horizon=horizon,
    )  # fmt: skip
    return config, sampler


def time_calls(
    sampler: EpisodeSampler, policy: Any, params: Any, tasks: list[Any], reps: int
) -> tuple[float, int]:
    """Median seconds of ``reps`` sample calls (after one warm-up) and the steps of one call."""
    generator = torch.Generator().manual_seed(0)
    batch = sampler.sample(policy, params, tasks, generator=generator, seed=0)
    times = []
    for r in range(reps):
        start = time.perf_counter()
        batch = sampler.sample(policy, params, tasks, generator=generator, seed=r + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times), int(batch.mask.sum())


def measure(
    backend: str, workers: int, args: argparse.Namespace, policy: Any, params: Any, tasks: Any
) -> dict[str, float]:
    _, sampler = build(backend, workers, args.tasks, args.episodes, args.horizon, args.address)
    try:
        seconds, steps = time_calls(sampler, policy, params, tasks, args.reps)
    finally:
        sampler.close()
    _, tiny = build(backend, min(workers, 2), 2, 1, 1, args.address)
    try:
        call_s, _ = time_calls(tiny, policy, params, tasks[:2], max(args.reps, 5))
    finally:
        tiny.close()
    name = f"{backend}/{workers}w"
    return {
        f"{name}/sample_s": seconds,
        f"{name}/steps_per_s": steps / seconds,
        f"{name}/call_overhead_s": call_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--backends", nargs="*", default=["local", "processes", "ray"])
    parser.add_argument("--address", default=None, help="an existing Ray cluster to join")
    parser.add_argument("--seconds", type=float, default=3.0, help="raw stepping time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(None, ["kind=rl", f"env.id={ENV_ID}"])
    env = make_env(ENV_ID)
    policy = make_policy(config, env)
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = task_env(env, ENV_ID).sample_tasks(args.tasks, np.random.default_rng(0))
    env.close()
    figures: dict[str, Any] = {
        "env": ENV_ID,
        "size": f"{args.tasks}x{args.episodes}x{args.horizon}",
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        figures["raw_single_env_steps_per_s"] = raw_cheetah_rate(args.seconds)
    print(f"raw HalfCheetah-v5, one env: {figures['raw_single_env_steps_per_s']:.0f} steps/s")
    if "ray" in args.backends:  # one Ray for all measurements (the samplers leave it up)
        import ray

        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    for backend in args.backends:
        for workers in [1] if backend == "local" else args.workers:
            got = measure(backend, workers, args, policy, params, tasks)
            figures.update(got)
            rate, call = (
                got[f"{backend}/{workers}w/steps_per_s"],
                got[f"{backend}/{workers}w/call_overhead_s"],
            )
            print(
                f"{backend:9s} {workers} worker(s): {rate:8.0f} steps/s "
                f"({rate / figures['raw_single_env_steps_per_s']:.2f}x raw one-core), "
                f"fixed cost per call {call * 1e3:.1f} ms"
            )
    for workers in args.workers:
        ray_key, proc_key = f"ray/{workers}w/steps_per_s", f"processes/{workers}w/steps_per_s"
        if ray_key in figures and proc_key in figures:
            ratio = figures[ray_key] / figures[proc_key]
            figures[f"ray_vs_processes/{workers}w"] = ratio
            print(f"ray / processes at {workers} worker(s): {ratio:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
