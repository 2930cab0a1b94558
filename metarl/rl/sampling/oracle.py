"""The oracle of the MAML paper: a task env whose observation also shows the task.

A policy trained on :class:`OracleEnv` knows which task it is in, so its return is the level a
meta-learned policy can hope to reach after adapting (the paper's horizontal "oracle" line).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, cast

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

__all__ = ["OracleEnv", "task_features"]


def task_features(task: Any) -> NDArray[np.float32]:
    """The task as a flat float vector: its dataclass fields (numbers or tuples of numbers)."""
    if not dataclasses.is_dataclass(task) or isinstance(task, type):
        raise TypeError(f"oracle: task {task!r} is not a dataclass instance; cannot observe it")
    values: list[float] = []
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if not isinstance(item, numbers.Real):
                raise TypeError(
                    f"oracle: task field {f.name}={value!r} is not a number or a "
                    "tuple of numbers; cannot observe it"
                )
            values.append(float(item))
    return np.asarray(values, dtype=np.float32)


class OracleEnv(gym.Env[NDArray[np.float32], Any]):
    """Wraps a task env (made with ``gymnasium.make``, time limit included): observation =
    ``concat(env observation, task_features(task))``; tasks, actions and rewards are the env's."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self._base: Any = cast(Any, env).unwrapped
        inner = env.observation_space
        if not isinstance(inner, gym.spaces.Box) or len(inner.shape) != 1:
            raise TypeError(f"oracle: needs a flat Box observation space, got {inner}")
        self._features = task_features(self._base.task)
        low = np.concatenate([inner.low, np.full(self._features.shape, -np.inf)])
        high = np.concatenate([inner.high, np.full(self._features.shape, np.inf)])
        self.observation_space = gym.spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )
        self.action_space = env.action_space
        self.spec = env.spec

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        tasks: list[Any] = self._base.sample_tasks(num_tasks, rng)
        return tasks

    def set_task(self, task: Any) -> None:
        self._base.set_task(task)
        self._features = task_features(task)

    @property
    def task(self) -> Any:
        return self._base.task

    @task.setter
    def task(self, task: Any) -> None:
        self.set_task(task)

    def _observe(self, obs: Any) -> NDArray[np.float32]:
        return np.concatenate([np.asarray(obs, dtype=np.float32), self._features])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[NDArray[np.float32], Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()
