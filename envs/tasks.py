"""Task dataclasses, task distributions, and the mixin that gives an env the task protocol.

Tasks are frozen dataclasses of Python floats/ints (clean ``==``, ``repr`` and pickling).
A distribution knows how to sample tasks from an explicit ``np.random.Generator`` and how to
validate a task for one env (type, then support); :class:`TaskEnvMixin` turns a distribution into
``sample_tasks`` / ``set_task`` / ``task`` on any env class, so no env repeats that code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from metarl.tasks import (
    real_field,
    real_pair_field,
    require_in_box,
    require_in_range,
    require_num_tasks,
    require_one_of,
    require_task_type,
)

__all__ = [
    "DirectionTask",
    "GoalTask",
    "NavigationTask",
    "RandomDirection",
    "TaskDistribution",
    "TaskEnvMixin",
    "TaskVectorEnvMixin",
    "UniformGoal",
    "UniformVelocity",
    "VelocityTask",
]

TaskT = TypeVar("TaskT")


@dataclass(frozen=True)
class VelocityTask:
    """Run at a target forward velocity (m/s)."""

    velocity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "velocity", real_field("VelocityTask", "velocity", self.velocity))


@dataclass(frozen=True)
class DirectionTask:
    """Run forward (``direction=+1``) or backward (``direction=-1``)."""

    direction: int

    def __post_init__(self) -> None:
        value = real_field("DirectionTask", "direction", self.direction)
        if not value.is_integer():
            raise TypeError(f"DirectionTask: direction must be an int (+1 or -1), got {value!r}")
        object.__setattr__(self, "direction", int(value))


@dataclass(frozen=True)
class NavigationTask:
    """Reach the goal position ``(x, y)`` in the plane (2D navigation)."""

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "goal", real_pair_field("NavigationTask", "goal", self.goal))


@dataclass(frozen=True)
class GoalTask:
    """Move the robot's torso to the goal position ``(x, y)`` on the floor."""

    goal: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "goal", real_pair_field("GoalTask", "goal", self.goal))


class TaskDistribution(Protocol[TaskT]):
    """Samples tasks with an explicit rng and validates a task for the env named ``owner``."""

    def sample(self, owner: str, num_tasks: int, rng: np.random.Generator) -> list[TaskT]:
        """``num_tasks`` tasks drawn with ``rng``."""
        ...

    def validate(self, owner: str, task: object) -> TaskT:
        """``task`` if it has the right type and lies in the support, else a clear error."""
        ...


@dataclass(frozen=True)
class UniformVelocity:
    """:class:`VelocityTask` with velocity ~ U[low, high]."""

    low: float
    high: float

    def sample(self, owner: str, num_tasks: int, rng: np.random.Generator) -> list[VelocityTask]:
        n = require_num_tasks(owner, num_tasks)
        return [VelocityTask(float(v)) for v in rng.uniform(self.low, self.high, size=n)]

    def validate(self, owner: str, task: object) -> VelocityTask:
        checked = require_task_type(owner, task, VelocityTask)
        require_in_range(owner, "goal velocity", checked.velocity, self.low, self.high)
        return checked


@dataclass(frozen=True)
class RandomDirection:
    """:class:`DirectionTask` with direction -1 or +1, each with probability 1/2."""

    def sample(self, owner: str, num_tasks: int, rng: np.random.Generator) -> list[DirectionTask]:
        n = require_num_tasks(owner, num_tasks)
        return [DirectionTask(int(d)) for d in 2 * rng.integers(0, 2, size=n) - 1]

    def validate(self, owner: str, task: object) -> DirectionTask:
        checked = require_task_type(owner, task, DirectionTask)
        require_one_of(owner, "direction", checked.direction, (-1, 1))
        return checked


@dataclass(frozen=True)
class UniformGoal:
    """Goal tasks (``task_type(goal=(x, y))``) with goal ~ U[low, high]^2."""

    task_type: type[NavigationTask] | type[GoalTask]
    low: float
    high: float

    def sample(self, owner: str, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        n = require_num_tasks(owner, num_tasks)
        goals = rng.uniform(self.low, self.high, size=(n, 2))
        return [self.task_type(goal=(float(x), float(y))) for x, y in goals]

    def validate(self, owner: str, task: object) -> Any:
        checked = require_task_type(owner, task, self.task_type)
        require_in_box(owner, "goal", checked.goal, self.low, self.high)
        return checked


class TaskEnvMixin(Generic[TaskT]):
    """``sample_tasks`` / ``set_task`` / ``task`` (with a setter) from a class's distribution.

    A subclass sets ``task_distribution`` and ``default_task`` and may override
    :meth:`_apply_task` to cache what its reward needs (kept off the per-step path).
    """

    task_distribution: ClassVar[TaskDistribution[Any]]
    default_task: ClassVar[Any]
    _task: TaskT

    @property
    def task_env_name(self) -> str:
        """The env's name in error messages (its class name without the ``Env`` suffix)."""
        return type(self).__name__.removesuffix("Env")

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[TaskT]:
        """``num_tasks`` tasks drawn from this env's task distribution with ``rng``."""
        tasks: list[TaskT] = self.task_distribution.sample(self.task_env_name, num_tasks, rng)
        return tasks

    def set_task(self, task: TaskT) -> None:
        """Follow ``task`` from the next step on; ``TypeError``/``ValueError`` if invalid."""
        checked: TaskT = self.task_distribution.validate(self.task_env_name, task)
        self._task = checked
        self._apply_task(checked)

    @property
    def task(self) -> TaskT:
        """The current task (assigning to it calls :meth:`set_task`)."""
        return self._task

    @task.setter
    def task(self, task: TaskT) -> None:
        self.set_task(task)

    def _apply_task(self, task: TaskT) -> None:
        """Hook: cache the task's numbers for the reward."""


class TaskVectorEnvMixin(Generic[TaskT]):
    """The task protocol of a batched vector env (one task per sub-env): ``tasks``, and
    Gymnasium's ``set_attr("task", ...)`` / ``get_attr("task")``. A subclass implements
    :meth:`set_tasks` (validating, and setting ``_tasks``)."""

    num_envs: int
    _tasks: tuple[TaskT, ...]

    @property
    def tasks(self) -> tuple[TaskT, ...]:
        """The task of each sub-env."""
        return self._tasks

    def set_tasks(self, tasks: Sequence[TaskT]) -> None:
        """Give sub-env ``i`` the task ``tasks[i]`` (from its next step on)."""
        raise NotImplementedError

    def _check_task_count(self, tasks: Sequence[TaskT]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(
                f"{type(self).__name__}: set_tasks needs one task per sub-env "
                f"({self.num_envs}), got {len(tasks)}"
            )

    def set_attr(self, name: str, values: Any) -> None:
        """``set_attr("task", tasks)`` (one per sub-env, or one for all) calls :meth:`set_tasks`."""
        if name != "task":
            raise AttributeError(f"{type(self).__name__} can only set 'task', not {name!r}")
        many = isinstance(values, list | tuple)
        self.set_tasks(values if many else [values] * self.num_envs)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """``get_attr("task")``: the task of each sub-env."""
        if name != "task":
            raise AttributeError(f"{type(self).__name__} can only get 'task', not {name!r}")
        return self._tasks
