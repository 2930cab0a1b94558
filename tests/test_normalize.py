"""Action normalization (rllab's ``normalize``): policy in [-1, 1], env in its own bounds."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import metarl  # noqa: F401  (registers the metarl/ envs)
from metarl.rl.sampling.normalize import (
    NormalizedVectorEnv,
    normalize_actions,
    normalize_vector_actions,
)
from metarl.tasks import check_task_env


class _Recorder(gym.Env[np.ndarray, Any]):
    """Remembers the last action it was given; bounds of different widths per dimension."""

    def __init__(self, low: Any = (-0.1, 2.0), high: Any = (0.1, 6.0)) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(
            np.asarray(low, np.float32), np.asarray(high, np.float32), dtype=np.float32
        )
        self.last: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> Any:
        self.last = np.asarray(action)
        return np.zeros(1, np.float32), 0.0, False, False, {}


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ((-1.0, -1.0), (-0.1, 2.0)),  # -1 -> low
        ((1.0, 1.0), (0.1, 6.0)),  # +1 -> high
        ((0.0, 0.5), (0.0, 5.0)),  # affine in between: low + (a + 1) / 2 * (high - low)
        ((-7.0, 3.0), (-0.1, 6.0)),  # clipped beyond
    ],
)
def test_unit_actions_map_onto_the_bounds_and_clip_beyond(action: Any, expected: Any) -> None:
    raw = _Recorder()
    env = normalize_actions(raw)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    env.reset(seed=0)
    env.step(np.asarray(action, np.float32))
    assert raw.last is not None and raw.last.dtype == np.float32
    np.testing.assert_allclose(raw.last, expected, rtol=0, atol=1e-6)


def test_the_env_keeps_its_native_spec() -> None:
    env = normalize_actions(gym.make("metarl/Navigation2D-v0"))
    assert env.unwrapped.action_space == gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
    assert gym.make("metarl/Navigation2D-v0").action_space == env.unwrapped.action_space
    assert env.action_space.high.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", "metarl/HalfCheetahDir-v0"])
def test_normalized_task_env_passes_the_checker(env_id: str) -> None:
    check_task_env(normalize_actions(gym.make(env_id)))


def test_discrete_actions_are_left_alone_and_infinite_bounds_refused() -> None:
    cartpole = gym.make("CartPole-v1")
    assert normalize_actions(cartpole) is cartpole
    with pytest.raises(ValueError, match="infinite bound"):
        normalize_actions(_Recorder(low=(-np.inf, 0.0), high=(1.0, 1.0)))


def _single_rollouts(env_id: str, tasks: list[Any], actions: np.ndarray, seeds: list[int]) -> Any:
    out = []
    for i, task in enumerate(tasks):
        env = normalize_actions(gym.make(env_id))
        env.unwrapped.set_task(task)
        obs = [env.reset(seed=seeds[i])[0]]
        rewards, ends = [], []
        for t in range(actions.shape[0]):
            o, r, term, trunc, _ = env.step(actions[t, i])
            obs.append(o)
            rewards.append(r)
            ends.append((term, trunc))
            if term or trunc:
                break
        out.append((np.asarray(obs), np.asarray(rewards), ends))
    return out


@pytest.mark.parametrize(
    ("env_id", "steps"), [("metarl/Navigation2D-v0", 100), ("metarl/HalfCheetahVel-v0", 30)]
)
def test_batched_env_equals_single_envs_bitwise_through_normalization(
    env_id: str, steps: int
) -> None:
    n = 4
    rng = np.random.default_rng(3)
    vec = normalize_vector_actions(gym.make_vec(env_id, num_envs=n))
    assert isinstance(vec, NormalizedVectorEnv)
    tasks = gym.make(env_id).unwrapped.sample_tasks(n, rng)
    # actions well beyond [-1, 1] too, so clipping is exercised
    actions = rng.normal(0.0, 1.5, size=(steps, n, *vec.single_action_space.shape))
    actions = actions.astype(np.float32)
    seeds = [11, 12, 13, 14]
    vec.set_attr("task", tasks)
    assert vec.get_attr("task") == tuple(tasks)
    first, _ = vec.reset(seed=seeds)
    single = _single_rollouts(env_id, tasks, actions, seeds)
    alive = np.ones(n, bool)
    observations, rewards = [first], []
    for t in range(steps):
        obs, rew, term, trunc, _ = vec.step(actions[t])
        for i in np.flatnonzero(alive):
            s_obs, s_rew, s_ends = single[i]
            np.testing.assert_array_equal(obs[i], s_obs[t + 1])
            assert rew[i] == s_rew[t]
            assert (bool(term[i]), bool(trunc[i])) == s_ends[t]
        alive &= ~(term | trunc)
        observations.append(obs)
        rewards.append(rew)
    for i in range(n):
        np.testing.assert_array_equal(first[i], single[i][0][0])
