"""Ant tasks of the MAML paper's code on Gymnasium's Ant-v5 model (horizon 200).

reward = forward term - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2 + 0.05 (survive), with

- AntVel: goal velocity ~ U[0, 3]; forward term -|v - goal| + 1;
- AntDir: direction in {-1, +1}; forward term direction * v;
- AntGoal: goal ~ U[-3, 3]^2; term -(|x - gx| + |y - gy|) + 4, (x, y) the torso's position
  (the free joint's ``qpos[0:2]``) after the step.

``v`` is the v5 env's forward velocity of the torso. The costs, the survive bonus (0.05 while
healthy) and termination (torso height outside [0.2, 1.0]) are Ant-v5's own, configured through
its constructor; only the reward hook ``_get_rew`` is ours. ``info`` holds the reward terms
(``reward_forward`` or ``reward_goal``, ``reward_ctrl``, ``reward_contact``, ``reward_survive``)
and ``task``.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from numpy.typing import NDArray

from envs.mujoco_base import MujocoTaskEnvMixin
from envs.tasks import (
    DirectionTask,
    GoalTask,
    RandomDirection,
    UniformGoal,
    UniformVelocity,
    VelocityTask,
)

__all__ = ["AntDirEnv", "AntGoalEnv", "AntVelEnv"]

TaskT = TypeVar("TaskT")


class _AntTaskEnv(MujocoTaskEnvMixin[TaskT], AntEnv):
    """Ant-v5 with a task-dependent forward term and the paper's cost weights."""

    defaults: ClassVar[dict[str, Any]] = {
        "ctrl_cost_weight": 0.005,
        "contact_cost_weight": 0.0005,
        "healthy_reward": 0.05,
    }
    forward_key: ClassVar[str] = "reward_forward"

    def __init__(self, *, task: TaskT | None = None, **kwargs: Any) -> None:
        self._init_task_env(task, self.defaults, **kwargs)

    def _forward_term(self, x_velocity: float) -> float:
        raise NotImplementedError

    def _get_rew(
        self, x_velocity: float, action: NDArray[np.float32]
    ) -> tuple[float, dict[str, Any]]:
        forward = self._forward_reward_weight * self._forward_term(x_velocity)
        survive = self.healthy_reward
        ctrl_cost = self.control_cost(action)  # type: ignore[no-untyped-call]
        contact_cost = self.contact_cost
        info = {
            self.forward_key: forward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": survive,
            "task": self._task,
        }
        return forward + survive - ctrl_cost - contact_cost, info


class AntVelEnv(_AntTaskEnv[VelocityTask]):
    """Run at a goal velocity: forward term -|v - goal| + 1, goal ~ U[0, 3]."""

    task_distribution = UniformVelocity(0.0, 3.0)
    default_task = VelocityTask(1.5)
    _goal_velocity: float

    def _apply_task(self, task: VelocityTask) -> None:
        self._goal_velocity = task.velocity

    def _forward_term(self, x_velocity: float) -> float:
        return -abs(x_velocity - self._goal_velocity) + 1.0


class AntDirEnv(_AntTaskEnv[DirectionTask]):
    """Run in a direction: forward term direction * v, direction -1 or +1."""

    task_distribution = RandomDirection()
    default_task = DirectionTask(1)
    _direction: int

    def _apply_task(self, task: DirectionTask) -> None:
        self._direction = task.direction

    def _forward_term(self, x_velocity: float) -> float:
        return self._direction * x_velocity


class AntGoalEnv(_AntTaskEnv[GoalTask]):
    """Reach a goal position: term -(L1 distance of the torso's xy to the goal) + 4."""

    task_distribution = UniformGoal(GoalTask, -3.0, 3.0)
    default_task = GoalTask(goal=(1.5, 1.5))
    forward_key = "reward_goal"
    _goal_x: float
    _goal_y: float

    def _apply_task(self, task: GoalTask) -> None:
        self._goal_x, self._goal_y = task.goal

    def _forward_term(self, x_velocity: float) -> float:
        qpos = self.data.qpos
        return -float(abs(qpos[0] - self._goal_x) + abs(qpos[1] - self._goal_y)) + 4.0
