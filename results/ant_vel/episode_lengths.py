"""How long an Ant run's policy stays healthy: per run, the episodes' lengths (of the 200-step
horizon) and why they ended (the torso above 1.0 m: a jump; below 0.2 m: a fall), acting as
in training (stochastic) on tasks drawn with a fixed seed.

    python results/ant_vel/episode_lengths.py RUN [RUN ...] [--tasks 10] [--episodes 4]
        [--adapt STEPS] [--per-goal]

``--adapt STEPS`` first adapts the policy to each task with that many policy-gradient steps
(the run's eval lr and episodes, as ``TrainedPolicy.adapt``); ``--per-goal`` prints a line per
task, goals in increasing order, with the mean speed after the first 25 steps (0.5 s at the
paper's 0.02 s per step). A random baseline's run holds the initial weights. Run it from the
repository root for ``paper_dt.py`` runs (their env file is named relative to it).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

import metarl
from metarl.rl.sampling.oracle import task_features

WARMUP = 25  # env steps left out of the speed: the ant starting from rest


def _mujoco(env: object) -> Any:
    """The MuJoCo env under ``env`` (an oracle run's env wraps it in an ``OracleEnv``)."""
    base: Any = getattr(env, "unwrapped", env)
    inner = getattr(base, "env", None)
    return _mujoco(inner) if inner is not None else base


def _episodes(policy: Any, task: Any, i: int, episodes: int) -> list[tuple[int, str, float, float]]:
    """(length, how it ended, speed after WARMUP steps or nan, return) of each episode."""
    env = policy.make_env(task)
    mujoco = _mujoco(env)
    out = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=100 * i + ep)
        total, steps, ended, xs = 0.0, 0, "", []
        for t in range(200):
            action = policy.act(obs, seed=10_000 * i + 100 * ep + t)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            xs.append(float(mujoco.data.qpos[0]))
            if terminated:
                z = float(mujoco.data.qpos[2])
                ended = "jump" if z > 1.0 else "fall" if z < 0.2 else ""
            if terminated or truncated:
                break
        run = len(xs) - WARMUP
        speed = (xs[-1] - xs[WARMUP - 1]) / (run * mujoco.dt) if run > 0 else float("nan")
        out.append((steps, ended, speed, total))
    env.close()
    return out


def _ends_and_return(eps: list[tuple[int, str, float, float]]) -> str:
    """How many of the episodes ended by a jump and by a fall, and their mean return."""
    jumps = sum(e[1] == "jump" for e in eps)
    falls = sum(e[1] == "fall" for e in eps)
    mean = np.mean([e[3] for e in eps])
    return (
        f"ended by a jump {jumps}/{len(eps)}, by a fall {falls}/{len(eps)}; mean return {mean:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--adapt", type=int, default=0, metavar="STEPS")
    parser.add_argument("--per-goal", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        policy = metarl.load_policy(run)
        tasks = policy.sample_tasks(args.tasks, seed=123)
        probe = policy.make_env()
        dt = _mujoco(probe).dt
        probe.close()
        rows = []
        for i, task in enumerate(tasks):
            acting = policy.adapt(task, steps=args.adapt, seed=i) if args.adapt else policy
            rows.append((task, _episodes(acting, task, i, args.episodes)))
        if args.per_goal:
            print(f"{run} ({dt:.2f} s per step, after {args.adapt} steps):")
            for task, eps in sorted(rows, key=lambda r: tuple(np.ravel(task_features(r[0])))):
                goal = ", ".join(f"{x:.2f}" for x in np.ravel(task_features(task)))
                speed = np.nanmean([e[2] for e in eps])
                print(
                    f"  goal {goal}: length {np.mean([e[0] for e in eps]):.0f}, "
                    f"speed {speed:.2f}, {_ends_and_return(eps)}"
                )
        eps = [e for _, episodes in rows for e in episodes]
        lengths = [e[0] for e in eps]
        print(
            f"{run} ({dt:.2f} s per step): episode length median {np.median(lengths):.0f}, "
            f"mean {np.mean(lengths):.0f} of 200; {_ends_and_return(eps)}"
        )


if __name__ == "__main__":
    main()
