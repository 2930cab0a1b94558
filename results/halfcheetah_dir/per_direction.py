"""A HalfCheetahDir run's return per direction, before and after ``--steps`` policy-gradient
steps: for each direction (-1 backward, +1 forward) the mean return, forward term and control
cost per episode and the mean x velocity, over ``--episodes`` episodes of 200 steps acting as in
training (stochastic). An oracle run sees the direction; a MAML run adapts to it.

    python results/halfcheetah_dir/per_direction.py results/halfcheetah_dir/runs/oracle \\
        [--steps 0] [--episodes 10]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from metarl.envs import DirectionTask

import metarl

HORIZON = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = metarl.load_policy(args.run)
    for steps in args.steps:
        for i, direction in enumerate((-1, 1)):
            task = DirectionTask(direction=direction)
            adapted = policy.adapt(task, steps=steps, seed=i) if steps else policy
            env = adapted.make_env(task)
            totals = []
            for ep in range(args.episodes):
                obs, _ = env.reset(seed=100 * i + ep)
                ret = fwd = ctrl = vel = 0.0
                for t in range(1, HORIZON + 1):
                    action = adapted.act(obs, seed=10_000 * i + 100 * ep + t)
                    obs, reward, terminated, truncated, info = env.step(action)
                    ret += float(reward)
                    fwd += float(info["reward_forward"])
                    ctrl += float(info["reward_ctrl"])
                    vel += float(info["x_velocity"]) / HORIZON
                    if terminated or truncated:
                        break
                totals.append((ret, fwd, ctrl, vel))
            env.close()
            m = np.mean(np.array(totals), axis=0)
            print(
                f"steps {steps} direction {direction:+d}: return {m[0]:.1f} (forward {m[1]:.1f}, "
                f"control {m[2]:.1f}), mean x velocity {m[3]:+.2f}"
            )


if __name__ == "__main__":
    main()
