"""How much of an AntGoal episode's return the linear feature baseline can predict, with and
without the torso's position in its features: per task, ``--episodes`` episodes of a run's
policy (stochastic, as in training), the baseline fitted to them as the inner step fits it
(rllab's features ``[o, o**2, t/100, (t/100)**2, (t/100)**3, 1]``, ridge 1e-5, on the
discounted returns), and its explained variance ``1 - Var(R - b) / Var(R)`` over their steps.
``o`` is the observation the policy saw (Ant-v5's, without the position), or that observation
with the torso's (x, y) appended (rllab's ant observed ``qpos`` whole, the position included).

    python results/ant_goal/baseline_fit.py results/ant_goal/runs/maml_seed0 \\
        [--tasks 10] [--episodes 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import metarl

GAMMA = 0.99


def explained_variance(obs: list[np.ndarray], returns: list[np.ndarray]) -> float:
    feats = []
    for o in obs:
        o = np.clip(o, -10, 10)
        t = np.arange(len(o)).reshape(-1, 1) / 100.0
        feats.append(np.concatenate([o, o**2, t, t**2, t**3, np.ones_like(t)], axis=1))
    x, y = np.concatenate(feats), np.concatenate(returns)
    w = np.linalg.lstsq(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y, rcond=-1)[0]
    return float(1.0 - np.var(y - x @ w) / np.var(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy = metarl.load_policy(args.run)
    without, with_position = [], []
    for i, task in enumerate(policy.sample_tasks(args.tasks, seed=123)):
        env = policy.make_env(task)
        obs_seen, obs_pos, returns = [], [], []
        for ep in range(args.episodes):
            obs, _ = env.reset(seed=100 * i + ep)
            seen, pos, rewards = [], [], []
            for t in range(200):
                qpos = env.unwrapped.data.qpos  # type: ignore[attr-defined]
                seen.append(np.asarray(obs, dtype=np.float64))
                pos.append(np.concatenate([seen[-1], qpos[:2]]))
                action = policy.act(obs, seed=10_000 * i + 100 * ep + t)
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                if terminated or truncated:
                    break
            r = np.array(rewards)
            disc = np.array([np.sum(r[k:] * GAMMA ** np.arange(len(r) - k)) for k in range(len(r))])
            obs_seen.append(np.array(seen))
            obs_pos.append(np.array(pos))
            returns.append(disc)
        env.close()
        without.append(explained_variance(obs_seen, returns))
        with_position.append(explained_variance(obs_pos, returns))
        goal = task.goal
        print(
            f"goal ({goal[0]:+.2f}, {goal[1]:+.2f}): explained variance {without[-1]:.3f} "
            f"without the position, {with_position[-1]:.3f} with it"
        )
    print(
        f"mean over {len(without)} tasks: {np.mean(without):.3f} without the position, "
        f"{np.mean(with_position):.3f} with it"
    )


if __name__ == "__main__":
    main()
