"""Reward terms of a HalfCheetahVel run's policy after ``--steps`` policy-gradient steps:
per task, the forward term (-|v - goal| summed over an episode), the control cost and the mean
velocity after the first 50 steps; then the means over tasks.

    python results/halfcheetah_vel/reward_terms.py results/halfcheetah_vel/runs/maml_seed0 \\
        [--steps 1] [--tasks 10] [--episodes 3]

(for ``paper_dt.py`` runs, run it from the repository root: the env file is named relative to
it.)"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import metarl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = metarl.load_policy(args.run)
    forward, ctrl = [], []
    for i, task in enumerate(policy.sample_tasks(args.tasks, seed=123)):
        adapted = policy.adapt(task, steps=args.steps, seed=i) if args.steps else policy
        env = adapted.make_env(task)
        f = c = 0.0
        velocities = []
        for ep in range(args.episodes):
            obs, _ = env.reset(seed=100 * i + ep)
            for t in range(200):
                action = adapted.act(obs, seed=10_000 * i + 100 * ep + t)
                obs, _, terminated, truncated, info = env.step(action)
                f += info["reward_forward"] / args.episodes
                c += info["reward_ctrl"] / args.episodes
                if t >= 50:
                    velocities.append(info["x_velocity"])
                if terminated or truncated:
                    break
        forward.append(f)
        ctrl.append(c)
        print(
            f"goal {task.velocity:.2f}: forward {f:7.1f}  control {c:6.1f}  "
            f"mean velocity after step 50 {np.mean(velocities):.2f}"
        )
    print(
        f"mean over tasks: forward {np.mean(forward):.1f}, control {np.mean(ctrl):.1f}, "
        f"total {np.mean(forward) + np.mean(ctrl):.1f}"
    )


if __name__ == "__main__":
    main()
