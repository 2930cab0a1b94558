"""How long an Ant run's policy stays healthy: per run, the episodes' lengths (of the 200-step
horizon) and why they ended (the torso above 1.0 m: a jump; below 0.2 m: a fall), acting as
in training (stochastic) on tasks drawn with a fixed seed.

    python results/ant_vel/episode_lengths.py RUN [RUN ...] [--tasks 10] [--episodes 4]

A random baseline's run holds the initial weights. Run it from the repository root for
``paper_dt.py`` runs (their env file is named relative to it).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import metarl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        policy = metarl.load_policy(run)
        lengths, returns, jumps, falls = [], [], 0, 0
        for i, task in enumerate(policy.sample_tasks(args.tasks, seed=123)):
            env = policy.make_env(task)
            for ep in range(args.episodes):
                obs, _ = env.reset(seed=100 * i + ep)
                total, steps = 0.0, 0
                for t in range(200):
                    action = policy.act(obs, seed=10_000 * i + 100 * ep + t)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total += float(reward)
                    steps += 1
                    if terminated:
                        z = float(env.unwrapped.data.qpos[2])  # type: ignore[attr-defined]
                        jumps += z > 1.0
                        falls += z < 0.2
                    if terminated or truncated:
                        break
                lengths.append(steps)
                returns.append(total)
            env.close()
        n = len(lengths)
        dt = policy.make_env().unwrapped.dt  # type: ignore[attr-defined]
        print(
            f"{run} ({dt:.2f} s per step): episode length median {np.median(lengths):.0f}, "
            f"mean {np.mean(lengths):.0f} of 200; ended by a jump {jumps}/{n}, by a fall "
            f"{falls}/{n}; mean return {np.mean(returns):.1f}"
        )


if __name__ == "__main__":
    main()
