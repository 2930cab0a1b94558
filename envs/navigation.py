"""2D navigation (MAML paper, point_env_randgoal): a point moves from (0, 0) towards a goal.

Observation: the position (2,) float32. Action: a velocity, clipped to [-0.1, 0.1] per axis.
Reward: minus the Euclidean distance to the goal after the move. Terminated when both
|x - gx| and |y - gy| are below 0.01. Goals ~ U[-0.5, 0.5]^2. Horizon 100 steps.

:class:`Navigation2DEnv` is the single env (``gymnasium.make``) and :class:`Navigation2DVectorEnv`
the native batched one (``gymnasium.make_vec``); both step through the same
:class:`_NavigationCore`, so their trajectories are bitwise equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from .tasks import NavigationTask, TaskEnvMixin, TaskVectorEnvMixin, UniformGoal

__all__ = ["Navigation2DEnv", "Navigation2DVectorEnv"]

MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01
MAX_EPISODE_STEPS = 100
GOAL_DISTRIBUTION = UniformGoal(NavigationTask, -0.5, 0.5)
DEFAULT_TASK = NavigationTask(goal=(0.25, 0.25))

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def _observation_space() -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


def _action_space() -> spaces.Box:
    return spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)


class _NavigationCore:
    """Positions and goals of ``num_envs`` points; one step is a handful of numpy operations."""

    def __init__(self, num_envs: int) -> None:
        self.positions: FloatArray = np.zeros((num_envs, 2))
        self.goals: FloatArray = np.zeros((num_envs, 2))
        self._delta: FloatArray = np.empty((num_envs, 2))
        self._squared: FloatArray = np.empty((num_envs, 2))

    def step(self, actions: FloatArray) -> tuple[FloatArray, BoolArray]:
        """Move every point by its clipped action; return (rewards, terminated)."""
        np.clip(actions, -MAX_SPEED, MAX_SPEED, out=self._delta)
        self.positions += self._delta
        np.subtract(self.positions, self.goals, out=self._delta)
        np.multiply(self._delta, self._delta, out=self._squared)
        rewards = np.sqrt(self._squared[:, 0] + self._squared[:, 1])
        np.negative(rewards, out=rewards)
        np.abs(self._delta, out=self._delta)
        terminated = np.maximum(self._delta[:, 0], self._delta[:, 1]) < GOAL_TOLERANCE
        return rewards, terminated

    def observations(self) -> NDArray[np.float32]:
        """A fresh float32 copy of the positions."""
        return self.positions.astype(np.float32)


def _as_actions(actions: object, shape: tuple[int, ...]) -> FloatArray:
    array = np.asarray(actions, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"Navigation2D: actions must have shape {shape}, got {array.shape}")
    return array


class Navigation2DEnv(TaskEnvMixin[NavigationTask], gym.Env[NDArray[Any], Any]):
    """One point in the plane; its task is the goal (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's convention)
    task_distribution = GOAL_DISTRIBUTION
    default_task = DEFAULT_TASK

    def __init__(self, *, task: NavigationTask | None = None, render_mode: None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"Navigation2D has no render modes, got render_mode={render_mode!r}")
        self.observation_space = _observation_space()
        self.action_space = _action_space()
        self._core = _NavigationCore(1)
        self.set_task(self.default_task if task is None else task)

    def _apply_task(self, task: NavigationTask) -> None:
        self._core.goals[0] = task.goal

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Put the point back at (0, 0)."""
        super().reset(seed=seed)
        self._core.positions[:] = 0.0
        return self._core.observations()[0], {}

    def step(self, action: Any) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Move by the clipped action; reward is minus the distance to the goal."""
        rewards, terminated = self._core.step(_as_actions(action, (2,)).reshape(1, 2))
        return self._core.observations()[0], float(rewards[0]), bool(terminated[0]), False, {}


class Navigation2DVectorEnv(
    TaskVectorEnvMixin[NavigationTask], VectorEnv[NDArray[np.float32], Any, NDArray[Any]]
):
    """``num_envs`` navigation points stepped together, each with its own task.

    Handles the time limit itself (truncated at ``max_episode_steps``) and autoresets in
    Gymnasium's NEXT_STEP mode: the step after a sub-env's episode ends ignores its action and
    returns its reset observation with reward 0, terminated False, truncated False.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium's convention)
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        tasks: Sequence[NavigationTask] | None = None,
        render_mode: None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"Navigation2D has no render modes, got render_mode={render_mode!r}")
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.single_observation_space = _observation_space()
        self.single_action_space = _action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._core = _NavigationCore(num_envs)
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        self._tasks: tuple[NavigationTask, ...] = ()
        self.set_tasks([DEFAULT_TASK] * num_envs if tasks is None else tasks)

    def set_tasks(self, tasks: Sequence[NavigationTask]) -> None:
        """Give sub-env ``i`` the task ``tasks[i]`` (from its next step on)."""
        self._check_task_count(tasks)
        checked = tuple(GOAL_DISTRIBUTION.validate("Navigation2D", task) for task in tasks)
        self._core.goals[:] = [task.goal for task in checked]
        self._tasks = checked

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[NavigationTask]:
        """``num_tasks`` goals drawn with ``rng`` from U[-0.5, 0.5]^2."""
        tasks: list[NavigationTask] = GOAL_DISTRIBUTION.sample("Navigation2D", num_tasks, rng)
        return tasks

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Reset all sub-envs, or those in ``options["reset_mask"]``, to (0, 0).

        ``seed`` may be one int or one per sub-env, as for Gymnasium's vector envs; resets
        draw nothing (every point starts at the origin), so only the first seeds the env.
        """
        if seed is not None and not isinstance(seed, int):
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset: {len(seeds)} seeds for {self.num_envs} sub-envs")
            seed = int(seeds[0])
        super().reset(seed=seed)
        mask = np.ones(self.num_envs, dtype=np.bool_)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=np.bool_)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        self._core.positions[mask] = 0.0
        self._steps[mask] = 0
        self._autoreset[mask] = False
        return self._core.observations(), {}

    def step(
        self, actions: Any
    ) -> tuple[NDArray[np.float32], FloatArray, BoolArray, BoolArray, dict[str, Any]]:
        """Step all sub-envs with one set of numpy operations."""
        rewards, terminated = self._core.step(_as_actions(actions, (self.num_envs, 2)))
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        if self._autoreset.any():
            done = self._autoreset
            self._core.positions[done] = 0.0
            self._steps[done] = 0
            rewards[done] = 0.0
            terminated[done] = False
            truncated[done] = False
        np.logical_or(terminated, truncated, out=self._autoreset)
        return self._core.observations(), rewards, terminated, truncated, {}
