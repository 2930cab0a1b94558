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

``gymnasium.make_vec(id, num_envs, vectorization_mode="vector_entry_point")`` gives the batched
:class:`AntVelVectorEnv` / :class:`AntDirVectorEnv` / :class:`AntGoalVectorEnv` (one process,
sub-envs stepped from one loop; bitwise the single envs' episodes, terminations included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from numpy.typing import NDArray

from .mujoco_base import BoolArray, FloatArray, MujocoTaskEnvMixin, MujocoTaskVectorEnv
from .tasks import (
    DirectionTask,
    GoalTask,
    RandomDirection,
    UniformGoal,
    UniformVelocity,
    VelocityTask,
)

__all__ = [
    "AntDirEnv",
    "AntDirVectorEnv",
    "AntGoalEnv",
    "AntGoalVectorEnv",
    "AntVelEnv",
    "AntVelVectorEnv",
]

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


class _AntTaskVectorEnv(MujocoTaskVectorEnv[TaskT]):
    """Batched :class:`_AntTaskEnv` (see :class:`MujocoTaskVectorEnv`), Ant-v5's step in numpy.

    Per sub-env, as Ant-v5: ``mj_rnePostConstraint`` after the ``frame_skip`` steps (contact
    forces); the forward velocity from the main body's ``xpos`` (the position MuJoCo computed at
    the last sub-step's start, as the single env reads it); observation ``(qpos[2:], qvel,
    clip(cfrc_ext[1:]))``; reward ``forward_term + healthy_reward * healthy - ctrl_cost_weight
    |a|^2 - contact_cost_weight |clip(cfrc_ext)|^2``, in the single env's order of operations;
    termination when unhealthy (non-finite state or torso z outside ``healthy_z_range``).
    The keyword arguments are Ant-v5's (with our task envs' defaults).
    """

    xml_file = "ant.xml"
    post_constraint = True
    state_fields = ("qpos", "qvel", "xpos", "cfrc_ext")
    _contact_forces: FloatArray

    def __init__(
        self,
        num_envs: int = 1,
        *,
        max_episode_steps: int = 200,
        tasks: Sequence[TaskT] | None = None,
        frame_skip: int = 5,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 0.0005,
        healthy_reward: float = 0.05,
        main_body: int | str = 1,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        include_cfrc_ext_in_observation: bool = True,
        render_mode: None = None,
    ) -> None:
        self.forward_reward_weight = forward_reward_weight
        self.ctrl_cost_weight = ctrl_cost_weight
        self.contact_cost_weight = contact_cost_weight
        self.healthy_reward = healthy_reward
        self.terminate_when_unhealthy = terminate_when_unhealthy
        self.healthy_z_range = healthy_z_range
        self.contact_force_range = contact_force_range
        self.exclude_current_positions_from_observation = exclude_current_positions_from_observation
        self.include_cfrc_ext_in_observation = include_cfrc_ext_in_observation
        super().__init__(
            num_envs,
            max_episode_steps=max_episode_steps,
            frame_skip=frame_skip,
            reset_noise_scale=reset_noise_scale,
            tasks=tasks,
            render_mode=render_mode,
        )
        self.main_body = self.model.body(main_body).id  # a name or an index, as Ant-v5

    def _gather(self) -> None:
        super()._gather()
        low, high = self.contact_force_range
        self._contact_forces = np.clip(self._state["cfrc_ext"], low, high)

    def _x_positions(self) -> FloatArray:
        return self._state["xpos"][:, self.main_body, 0]

    def _healthy(self) -> BoolArray:
        min_z, max_z = self.healthy_z_range
        z = self._qpos[:, 2]
        finite = np.isfinite(self._qpos).all(axis=1) & np.isfinite(self._qvel).all(axis=1)
        healthy: BoolArray = finite & (min_z <= z) & (z <= max_z)
        return healthy

    def _terminations(self) -> BoolArray:
        if not self.terminate_when_unhealthy:
            return np.zeros(self.num_envs, dtype=np.bool_)
        return ~self._healthy()

    def _observations(self, qpos: FloatArray, qvel: FloatArray) -> FloatArray:
        parts = [qpos[:, 2:] if self.exclude_current_positions_from_observation else qpos, qvel]
        if self.include_cfrc_ext_in_observation:
            parts.append(self._contact_forces[:, 1:].reshape(self.num_envs, -1))
        return np.concatenate(parts, axis=1)

    def _rewards(self, x_velocity: FloatArray, actions: NDArray[Any]) -> FloatArray:
        # the single env's arithmetic, elementwise (a float32 action gives a float32 cost)
        forward = self.forward_reward_weight * self._forward_terms(x_velocity)
        survive = self._healthy() * self.healthy_reward
        ctrl_cost = self.ctrl_cost_weight * np.sum(np.square(actions), axis=1)
        contact_cost = self.contact_cost_weight * np.sum(
            np.square(self._contact_forces), axis=(1, 2)
        )
        rewards: FloatArray = forward + survive - ctrl_cost - contact_cost
        return rewards

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        raise NotImplementedError


class AntVelVectorEnv(_AntTaskVectorEnv[VelocityTask]):
    """``num_envs`` :class:`AntVelEnv` stepped together (``gymnasium.make_vec``)."""

    single_env = AntVelEnv
    _goals: FloatArray

    def _apply_tasks(self, tasks: tuple[VelocityTask, ...]) -> None:
        self._goals = np.array([task.velocity for task in tasks], dtype=np.float64)

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        terms: FloatArray = -np.abs(x_velocity - self._goals) + 1.0
        return terms


class AntDirVectorEnv(_AntTaskVectorEnv[DirectionTask]):
    """``num_envs`` :class:`AntDirEnv` stepped together (``gymnasium.make_vec``)."""

    single_env = AntDirEnv
    _directions: NDArray[np.int64]

    def _apply_tasks(self, tasks: tuple[DirectionTask, ...]) -> None:
        self._directions = np.array([task.direction for task in tasks], dtype=np.int64)

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        terms: FloatArray = self._directions * x_velocity
        return terms


class AntGoalVectorEnv(_AntTaskVectorEnv[GoalTask]):
    """``num_envs`` :class:`AntGoalEnv` stepped together (``gymnasium.make_vec``): the goal
    term reads the torso's ``qpos[0:2]`` after the step, as the single env."""

    single_env = AntGoalEnv
    _goals: FloatArray

    def _apply_tasks(self, tasks: tuple[GoalTask, ...]) -> None:
        self._goals = np.array([task.goal for task in tasks], dtype=np.float64).reshape(-1, 2)

    def _forward_terms(self, x_velocity: FloatArray) -> FloatArray:
        qpos, goals = self._qpos, self._goals
        distance = np.abs(qpos[:, 0] - goals[:, 0]) + np.abs(qpos[:, 1] - goals[:, 1])
        terms: FloatArray = -distance + 4.0
        return terms
