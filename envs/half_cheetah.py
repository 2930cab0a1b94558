"""Half-cheetah tasks of the MAML paper on Gymnasium's HalfCheetah-v5 model (horizon 200).

- HalfCheetahVel: goal velocity ~ U[0, 2]; reward = -|v - goal| - 0.05 |a|^2.
- HalfCheetahDir: direction in {-1, +1}; reward = direction * v - 0.05 |a|^2.

``v`` is the v5 env's forward velocity (x displacement of the torso over ``dt``). Only the reward
hook ``_get_rew`` is ours; stepping, observations and resets are HalfCheetah-v5's own.
``info`` holds ``reward_forward``, ``reward_ctrl`` and ``task`` (besides v5's position/velocity).
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from numpy.typing import NDArray

from envs.mujoco_base import MujocoTaskEnvMixin
from envs.tasks import DirectionTask, RandomDirection, UniformVelocity, VelocityTask

__all__ = ["HalfCheetahDirEnv", "HalfCheetahVelEnv"]

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
