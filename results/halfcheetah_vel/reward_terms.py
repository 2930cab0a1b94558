"""Reward terms of a HalfCheetahVel run's policy after ``--steps`` policy-gradient steps:
per task, the forward term (-|v - goal| summed over an episode), the control cost and the mean
velocity after the first 50 steps; then the means over tasks. The same episodes are also scored
with rllab's velocity, the whole body's centre-of-mass velocity after the step (rllab's
``get_body_comvel("torso")``: the torso's subtree is the whole cheetah), instead of v5's torso
displacement over the step: column ``forward (com)``.

    python results/halfcheetah_vel/reward_terms.py results/halfcheetah_vel/runs/maml_seed0 \\
        [--steps 1] [--tasks 10] [--episodes 3] [--goals LOW HIGH]

(``--goals``: goal velocities drawn from U[LOW, HIGH] instead of the env's U[0, 2]; the
paper's test script names U[0.1, 0.8] its pre-ICML range.)

(for ``paper_dt.py`` runs, run it from the repository root: the env file is named relative to
it.)"""

from __future__ import annotations

import argparse
from typing import Any

import mujoco
import numpy as np
import torch
from metarl.envs.tasks import VelocityTask

import metarl


def simulation(env: Any) -> Any:
    """The MuJoCo env under ``env``'s wrappers (an oracle run's ``OracleEnv`` holds it as
    ``env.env``, Gymnasium's wrappers as ``unwrapped``)."""
    return getattr(env, "env", env).unwrapped


def com_velocity(sim: Any, scratch: mujoco.MjData) -> float:
    """x velocity of the whole body's centre of mass in ``sim``'s current state."""
    scratch.qpos[:] = sim.data.qpos
    scratch.qvel[:] = sim.data.qvel
    mujoco.mj_forward(sim.model, scratch)
    mujoco.mj_subtreeVel(sim.model, scratch)
    return float(scratch.subtree_linvel[1][0])  # body 1 is the torso, root of the cheetah


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--goals", type=float, nargs=2, metavar=("LOW", "HIGH"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = metarl.load_policy(args.run)
    forward, forward_com, ctrl = [], [], []
    tasks = policy.sample_tasks(args.tasks, seed=123)
    if args.goals:
        low, high = args.goals
        goals = np.random.default_rng(123).uniform(low, high, size=args.tasks)
        tasks = [VelocityTask(float(g)) for g in goals]
    for i, task in enumerate(tasks):
        adapted = policy.adapt(task, steps=args.steps, seed=i) if args.steps else policy
        env = adapted.make_env(task)
        sim = simulation(env)
        scratch = mujoco.MjData(sim.model)
        f = fc = c = 0.0
        velocities = []
        for ep in range(args.episodes):
            obs, _ = env.reset(seed=100 * i + ep)
            for t in range(200):
                action = adapted.act(obs, seed=10_000 * i + 100 * ep + t)
                obs, _, terminated, truncated, info = env.step(action)
                f += info["reward_forward"] / args.episodes
                c += info["reward_ctrl"] / args.episodes
                fc -= abs(com_velocity(sim, scratch) - task.velocity) / args.episodes
                if t >= 50:
                    velocities.append(info["x_velocity"])
                if terminated or truncated:
                    break
        forward.append(f)
        forward_com.append(fc)
        ctrl.append(c)
        print(
            f"goal {task.velocity:.2f}: forward {f:7.1f}  forward (com) {fc:7.1f}  "
            f"control {c:6.1f}  "
            f"mean velocity after step 50 {np.mean(velocities):.2f}"
        )
    print(
        f"mean over tasks: forward {np.mean(forward):.1f}, control {np.mean(ctrl):.1f}, "
        f"total {np.mean(forward) + np.mean(ctrl):.1f}; "
        f"forward (com) {np.mean(forward_com):.1f}, total (com) "
        f"{np.mean(forward_com) + np.mean(ctrl):.1f}"
    )


if __name__ == "__main__":
    main()
