"""Where an AntGoal run's policy takes the ant, before and after ``--steps`` policy-gradient
steps: per task, the goal's L1 distance from the start (the origin), the torso's L1 distance to
the goal at the episode's end and its least along the episode, the episode's length and return,
and the return of an ant that stands still for the 200 steps without costs
(``200 x (4 + 0.05 - |goal|_1)``, the reward's survival part). Acting as in training
(stochastic), on tasks drawn with a fixed seed.

    python results/ant_goal/goal_distance.py results/ant_goal/runs/maml_seed0 \\
        [--steps 0 1] [--tasks 10] [--episodes 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import metarl

HORIZON = 200


def l1(x: float, y: float, goal: tuple[float, float]) -> float:
    return abs(x - goal[0]) + abs(y - goal[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = metarl.load_policy(args.run)
    tasks = policy.sample_tasks(args.tasks, seed=123)
    for steps in args.steps:
        rows = []
        for i, task in enumerate(tasks):
            adapted = policy.adapt(task, steps=steps, seed=i) if steps else policy
            env = adapted.make_env(task)
            goal = tuple(float(g) for g in task.goal)
            start = l1(0.0, 0.0, goal)
            ends, least, lengths, returns = [], [], [], []
            for ep in range(args.episodes):
                obs, _ = env.reset(seed=100 * i + ep)
                total, best, now, t = 0.0, start, start, 0
                for t in range(1, HORIZON + 1):
                    action = adapted.act(obs, seed=10_000 * i + 100 * ep + t)
                    obs, reward, terminated, truncated, info = env.step(action)
                    total += float(reward)
                    now = l1(float(info["x_position"]), float(info["y_position"]), goal)
                    best = min(best, now)
                    if terminated or truncated:
                        break
                ends.append(now)
                least.append(best)
                lengths.append(t)
                returns.append(total)
            env.close()
            still = HORIZON * (4.05 - start)
            rows.append(
                (start, np.mean(ends), np.mean(least), np.mean(lengths), np.mean(returns), still)
            )
            print(
                f"steps {steps} goal ({goal[0]:+.2f}, {goal[1]:+.2f}): distance at start "
                f"{start:.2f}, at the end {np.mean(ends):.2f}, least {np.mean(least):.2f}; "
                f"length {np.mean(lengths):.0f}; return {np.mean(returns):.1f} "
                f"(standing still {still:.1f})"
            )
        m = np.mean(np.array(rows), axis=0)
        print(
            f"steps {steps}, mean over {len(rows)} tasks: distance at start {m[0]:.2f}, at the "
            f"end {m[1]:.2f}, least {m[2]:.2f}; length {m[3]:.0f}; return {m[4]:.1f} "
            f"(standing still {m[5]:.1f})"
        )


if __name__ == "__main__":
    main()
