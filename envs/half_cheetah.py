"""Half-cheetah tasks of the MAML paper on Gymnasium's HalfCheetah-v5 model (horizon 200).

- HalfCheetahVel: goal velocity ~ U[0, 2]; reward = -|v - goal| - 0.05 |a|^2.
- HalfCheetahDir: direction in {-1, +1}; reward = direction * v - 0.05 |a|^2.

``v`` is the v5 env's forward velocity (x displacement of the torso over ``dt``). Only the reward
hook ``_get_rew`` is ours; stepping, observations and resets are HalfCheetah-v5's own.
``info`` holds ``reward_forward``, ``reward_ctrl`` and ``task`` (besides v5's position/velocity).

``gymnasium.make_vec(id, num_envs, vectorization_mode="vector_entry_point")`` gives the batched
:class:`HalfCheetahVelVectorEnv` / :class:`HalfCheetahDirVectorEnv` (one process, sub-envs
stepped from one loop; bitwise the single envs' episodes, ~1.2x the raw single env's rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from numpy.typing import NDArray

from .mujoco_base import FloatArray, MujocoTaskEnvMixin, MujocoTaskVectorEnv
from .tasks import DirectionTask, RandomDirection, UniformVelocity, VelocityTask

__all__ = [
    "HalfCheetahDirEnv",
    "HalfCheetahDirVectorEnv",
    "HalfCheetahVelEnv",
    "HalfCheetahVelVectorEnv",
]

TaskT = TypeVar("TaskT")


class _HalfCheetahTaskEnv(MujocoTaskEnvMixin[TaskT], HalfCheetahEnv):
    """HalfCheetah-v5 with a task-dependent forward term; control cost weight 0.05."""

    defaults: ClassVar[dict[str, Any]] = {"ctrl_cost_weight": 0.05}

    def __init__(self, *, task: TaskT | None = None, **kwargs: Any) -> None:
        self._init_task_env(task, self.defaults, **kwargs)

    def _forward_term(self, x_velocity: float) -> float:
        raise NotImplementedError

    def _get_rew(
        self, x_velocity: float, action: NDArray[np.float32]
    ) -> tuple[float, dict[str, Any]]:
        forward = self._forward_reward_weight * self._forward_term(x_velocity)
        ctrl_cost = self.control_cost(action)  # type: ignore[no-untyped-call]
        info = {"reward_forward": forward, "reward_ctrl": -ctrl_cost, "task": self._task}
        return forward - ctrl_cost, info


class HalfCheetahVelEnv(_HalfCheetahTaskEnv[VelocityTask]):
    """Run at a goal velocity: forward term -|v - goal|, goal ~ U[0, 2]."""

    task_distribution = UniformVelocity(0.0, 2.0)
    default_task = VelocityTask(1.0)
    _goal_velocity: float

    def _apply_task(self, task: VelocityTask) -> None:
        self._goal_velocity = task.velocity

    def _forward_term(self, x_velocity: float) -> float:
        return -abs(x_velocity - self._goal_velocity)


class HalfCheetahDirEnv(_HalfCheetahTaskEnv[DirectionTask]):
    """Run in a direction: forward term direction * v, direction -1 or +1."""

    task_distribution = RandomDirection()
    default_task = DirectionTask(1)
    _direction: int

    def _apply_task(self, task: DirectionTask) -> None:
        self._direction = task.direction

    def _forward_term(self, x_velocity: float) -> float:
        return self._direction * x_velocity


class _HalfCheetahTaskVectorEnv(MujocoTaskVectorEnv[TaskT]):
    """Batched :class:`_HalfCheetahTaskEnv` (see :class:`MujocoTaskVectorEnv`): observations
    ``(qpos[1:], qvel)``, reward ``forward_term(v) - ctrl_cost_weight |a|^2``, no termination."""

    xml_file = "half_cheetah.xml"

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int = 200,
        tasks: Sequence[TaskT] | None = None,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        frame_skip: int = 5,
        render_mode: None = None,
    ) -> None:
        self.forward_reward_weight = forward_reward_weight
        self.ctrl_cost_weight = ctrl_cost_weight
        super().__init__(
            num_envs,
            max_episode_steps=max_episode_steps,
            frame_skip=frame_skip,
            reset_noise_scale=reset_noise_scale,
            tasks=tasks,
            render_mode=render_mode,
        )

    def _observations(self, qpos: FloatArray, qvel: FloatArray) -> FloatArray:
        return np.concatenate([qpos[:, 1:], qvel], axis=1)

    def _rewards(self, x_velocity: FloatArray, actions: NDArray[Any]) -> FloatArray:
        # the single env's arithmetic, elementwise (a float32 action gives a float32 cost)
        forward = self.forward_reward_weight * self._forward_terms(x_velocity)
        ctrl_cost = self.ctrl_cost_weight * np.sum(np.square(actions), axis=1)
        rewards: FloatArray = forward - ctrl_cost
        return rewards

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        raise NotImplementedError


class HalfCheetahVelVectorEnv(_HalfCheetahTaskVectorEnv[VelocityTask]):
    """``num_envs`` :class:`HalfCheetahVelEnv` stepped together (``gymnasium.make_vec``)."""

    single_env = HalfCheetahVelEnv
    _goals: FloatArray

    def _apply_tasks(self, tasks: tuple[VelocityTask, ...]) -> None:
        self._goals = np.array([task.velocity for task in tasks], dtype=np.float64)

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        return -np.abs(x_velocity - self._goals)


class HalfCheetahDirVectorEnv(_HalfCheetahTaskVectorEnv[DirectionTask]):
    """``num_envs`` :class:`HalfCheetahDirEnv` stepped together (``gymnasium.make_vec``)."""

    single_env = HalfCheetahDirEnv
    _directions: NDArray[np.int64]

    def _apply_tasks(self, tasks: tuple[DirectionTask, ...]) -> None:
        self._directions = np.array([task.direction for task in tasks], dtype=np.int64)

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        terms: FloatArray = self._directions * x_velocity
        return terms
