"""Steps per second of the task envs, against Gymnasium's raw v5 envs in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/env_speed.py [--seconds 2] [--repeats 3]
        [--only Navigation2D HalfCheetahVel AntVel] [--async-envs 2 8] [--num-ant 400]

Prints one line per measurement and, last, one JSON object with all figures. Rates are sub-env
steps per second (best of ``--repeats`` runs, raw and ours interleaved); ``overhead_pct`` is the
extra time per step of our env over the raw v5 env; the batched HalfCheetahVel and AntVel
vector envs (``gymnasium.make_vec``, one process) are shown against one raw HalfCheetah-v5 /
Ant-v5 measured beside them, and the batched AntVel also against ``--num-ant`` raw Ant-v5 envs
stepping the same episodes (see :func:`same_steps_figures`). ``--only`` restricts the run. Raw
HalfCheetah-v5 makes MuJoCo print its ``settotalmass`` deprecation warning (and write
MUJOCO_LOG.TXT): that is the baseline, not us, and it is made in a temporary directory.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import metarl  # noqa: F401  (registers the metarl/ envs)

PAIRS = {  # ours -> raw
    "metarl/HalfCheetahVel-v0": "HalfCheetah-v5",
    "metarl/AntVel-v0": "Ant-v5",
}
NAMES = ("Navigation2D", "HalfCheetahVel", "AntVel")


def _actions(space: gym.spaces.Box, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, size=(count, *space.shape)).astype(space.dtype)


def _rate(step: Callable[[int], None], seconds: float) -> float:
    """Sub-env steps per second of ``step(i)`` (which returns after one call's worth)."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            step(calls)
            calls += 1
    return calls / elapsed


def single_env_rate(env_id: str, seconds: float) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    actions = _actions(env.action_space, 1000, seed=0)

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()

    rate = _rate(step, seconds)
    env.close()
    return rate


def vector_env_rate(vec: Any, seconds: float) -> float:
    vec.reset(seed=0)
    actions = _actions(vec.action_space, 256, seed=0)
    rate = _rate(lambda i: vec.step(actions[i % len(actions)]), seconds) * vec.num_envs
    vec.close()
    return rate


def async_rate(env_id: str, num_envs: int, seconds: float) -> float:
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make(env_id)] * num_envs)
    return vector_env_rate(vec, seconds)


def best_of(repeats: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(repeats))


def navigation_figures(args: argparse.Namespace) -> dict[str, float]:
    nav, n = "metarl/Navigation2D-v0", args.num_nav
    batched = best_of(
        args.repeats,
        lambda: vector_env_rate(
            gym.make_vec(nav, num_envs=n, vectorization_mode="vector_entry_point"), args.seconds
        ),
    )
    sync = vector_env_rate(gym.make_vec(nav, num_envs=n, vectorization_mode="sync"), args.seconds)
    return {f"navigation2d_batched_{n}": batched, f"navigation2d_sync_{n}": sync}


def mujoco_figures(ours: str, raw: str, args: argparse.Namespace) -> dict[str, float]:
    name, raw_name = ours.split("/")[1].removesuffix("-v0"), raw.removesuffix("-v5") + "_v5"
    figures: dict[str, float] = {}
    measures = {"single": lambda env_id: single_env_rate(env_id, args.seconds)}
    for n in args.async_envs:
        measures[f"async{n}"] = lambda env_id, n=n: async_rate(env_id, n, args.seconds)
    for kind, measure in measures.items():
        ours_runs, raw_runs = [], []
        for _ in range(args.repeats):  # interleaved, so that drifts hit both alike
            ours_runs.append(measure(ours))
            raw_runs.append(measure(raw))
        figures[f"{name}_{kind}"] = max(ours_runs)
        figures[f"{raw_name}_{kind}"] = max(raw_runs)
        figures[f"{name}_{kind}_overhead_pct"] = 100.0 * (max(raw_runs) / max(ours_runs) - 1.0)
    return figures


def batched_mujoco_figures(ours: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    """The batched vector env of ``ours`` (``n`` sub-envs, one process) against one raw v5
    env, interleaved."""
    raw = PAIRS[ours]
    name, raw_name = ours.split("/")[1].removesuffix("-v0"), raw.removesuffix("-v5") + "_v5"
    batched_runs, raw_runs = [], []
    for _ in range(args.repeats):
        vec = gym.make_vec(ours, num_envs=n, vectorization_mode="vector_entry_point")
        batched_runs.append(vector_env_rate(vec, args.seconds))
        raw_runs.append(single_env_rate(raw, args.seconds))
    return {
        f"{name}_batched_{n}": max(batched_runs),
        f"{raw_name}_single_beside_batched": max(raw_runs),
        f"{name}_batched_{n}_speedup_over_raw": max(batched_runs) / max(raw_runs),
    }


def same_steps_figures(ours: str, n: int, args: argparse.Namespace) -> dict[str, float]:
    """Ant terminates, so a free-running single env and a batched one step different states
    (a fallen ant has other contacts, resets cost extra): here all step the same episodes
    from the same seeds with the same ``--same-steps`` action rows (bitwise the same MuJoCo
    work): the batched env, and ``n`` raw v5 envs or ``n`` of our single envs in a
    :class:`metarl.rl.sampling.processes.SerialVectorEnv` (what the sampler steps without a
    batched env)."""
    from metarl.rl.sampling.processes import SerialVectorEnv

    raw = PAIRS[ours]
    name, raw_name = ours.split("/")[1].removesuffix("-v0"), raw.removesuffix("-v5") + "_v5"
    vecs = {
        "batched": gym.make_vec(ours, num_envs=n, vectorization_mode="vector_entry_point"),
        "raw": SerialVectorEnv([lambda: gym.make(raw)] * n),
        "ours": SerialVectorEnv([lambda: gym.make(ours)] * n),
    }
    actions = _actions(vecs["batched"].action_space, args.same_steps, seed=0)
    runs: dict[str, list[float]] = {kind: [] for kind in vecs}
    for _ in range(args.repeats):
        for kind, vec in vecs.items():
            vec.reset(seed=0)
            start = time.perf_counter()
            for row in actions:
                vec.step(row)
            runs[kind].append(n * len(actions) / (time.perf_counter() - start))
    return {
        f"{name}_batched_{n}_same_steps": max(runs["batched"]),
        f"{raw_name}_x{n}_serial_same_steps": max(runs["raw"]),
        f"{name}_x{n}_serial_same_steps": max(runs["ours"]),
        f"{name}_batched_{n}_same_steps_speedup_over_raw": max(runs["batched"]) / max(runs["raw"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of one measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (best)")
    parser.add_argument("--num-nav", type=int, default=400, help="sub-envs of batched Nav2D")
    parser.add_argument(
        "--num-cheetah", type=int, default=400, help="sub-envs of batched HalfCheetahVel"
    )
    parser.add_argument("--num-ant", type=int, default=400, help="sub-envs of batched AntVel")
    parser.add_argument(
        "--async-envs", type=int, nargs="*", default=[2, 8], help="AsyncVectorEnv sizes"
    )
    parser.add_argument(
        "--only", nargs="+", choices=NAMES, default=list(NAMES), help="measure only these envs"
    )
    parser.add_argument(
        "--same-steps", type=int, default=50, help="steps of the Ant same-episodes comparison"
    )
    args = parser.parse_args()
    figures = navigation_figures(args) if "Navigation2D" in args.only else {}
    batched_sizes = {"metarl/HalfCheetahVel-v0": args.num_cheetah, "metarl/AntVel-v0": args.num_ant}
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        for ours, raw in PAIRS.items():
            if ours.split("/")[1].removesuffix("-v0") in args.only:
                figures.update(mujoco_figures(ours, raw, args))
                figures.update(batched_mujoco_figures(ours, batched_sizes[ours], args))
        if "AntVel" in args.only:
            figures.update(same_steps_figures("metarl/AntVel-v0", args.num_ant, args))
    for key, value in figures.items():
        unit = "%" if key.endswith("_pct") else "x" if key.endswith("_over_raw") else " steps/s"
        print(f"{key:48s} {value:14,.1f}{unit}")
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
