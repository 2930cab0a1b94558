"""The task-environment protocol, its checker, and the validation helpers that task envs share.

A *task env* is a :class:`gymnasium.Env` whose reward (or dynamics) depends on a task:

- ``sample_tasks(num_tasks, rng) -> list[Task]`` draws tasks from the env's task distribution,
  using only the given :class:`numpy.random.Generator`;
- ``set_task(task)`` makes the next episodes follow ``task`` (and rejects a task of the wrong type,
  or outside the distribution's support, with a clear ``TypeError``/``ValueError``);
- ``task`` is a property returning the current task, with a setter that calls ``set_task`` (so a
  Gymnasium vector env can give each sub-env its own task: ``vec.set_attr("task", tasks)``).

A Task is plain, frozen, picklable data, e.g. ``@dataclass(frozen=True)`` with float/int fields.
:func:`check_task_env` checks all of this on any env, ours or a user's.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import pickle
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

__all__ = [
    "TaskEnv",
    "TaskEnvError",
    "check_task_env",
    "check_task_protocol",
    "real_field",
    "real_pair_field",
    "require_in_box",
    "require_in_range",
    "require_num_tasks",
    "require_one_of",
    "require_task_type",
]

T = TypeVar("T")

_HELP = (
    "a task env needs sample_tasks(num_tasks, rng), set_task(task) and a task property "
    "(see README 'Your own task env')"
)
_DATA_HELP = "a Task must be plain data, e.g. @dataclass(frozen=True) with float/int fields"
_NUM_TASKS = 10
_NUM_STEPS = 20


@runtime_checkable
class TaskEnv(Protocol):
    """What a task env offers on top of :class:`gymnasium.Env` (see the module docstring)."""

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        """Draw ``num_tasks`` tasks from the task distribution with ``rng`` only."""
        ...

    def set_task(self, task: Any) -> None:
        """Make the next episodes follow ``task``; reject an invalid task with a clear error."""
        ...

    @property
    def task(self) -> Any:
        """The current task."""
        ...

    @task.setter
    def task(self, task: Any) -> None: ...


class TaskEnvError(Exception):
    """An environment does not follow the task-env protocol; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------
# Validation helpers shared by task envs and task dataclasses
# ---------------------------------------------------------------------------------------------


def real_field(owner: str, field: str, value: object) -> float:
    """``value`` as a Python float, or a ``TypeError`` naming ``owner.field`` and the value.

    Accepts Python and numpy reals (not bools, strings or arrays); use it in a task
    dataclass's ``__post_init__`` so that fields are clean Python floats.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{owner}: {field} must be a real number, got {value!r} ({type(value).__name__})"
        )
    return float(value)


def real_pair_field(owner: str, field: str, value: object) -> tuple[float, float]:
    """``value`` (a sequence or 1-d array of two reals) as a tuple of two Python floats."""
    items = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if not isinstance(items, Sequence) or isinstance(items, str | bytes) or len(items) != 2:
        raise TypeError(f"{owner}: {field} must be a pair (x, y) of real numbers, got {value!r}")
    return (real_field(owner, f"{field}[0]", items[0]), real_field(owner, f"{field}[1]", items[1]))


def require_task_type(owner: str, task: object, expected: type[T]) -> T:
    """``task`` if it is an ``expected``, else a ``TypeError`` naming both."""
    if not isinstance(task, expected):
        raise TypeError(
            f"{owner}: task must be a {expected.__name__}, got {task!r} ({type(task).__name__})"
        )
    return task


def require_in_range(owner: str, what: str, value: float, low: float, high: float) -> None:
    """A ``ValueError`` unless ``low <= value <= high`` (NaN is outside every range)."""
    if not low <= value <= high:
        raise ValueError(f"{owner}: {what} {value!r} is outside [{low!r}, {high!r}]")


def require_in_box(
    owner: str, what: str, value: tuple[float, ...], low: float, high: float
) -> None:
    """A ``ValueError`` unless every coordinate of ``value`` lies in ``[low, high]``."""
    if not all(low <= v <= high for v in value):
        raise ValueError(f"{owner}: {what} {value!r} is outside [{low!r}, {high!r}]^{len(value)}")


def require_one_of(owner: str, what: str, value: object, allowed: Sequence[object]) -> None:
    """A ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{owner}: {what} {value!r} is not one of {tuple(allowed)!r}")


def require_num_tasks(owner: str, num_tasks: object) -> int:
    """``num_tasks`` if it is a non-negative int, else a clear ``TypeError``/``ValueError``."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral):
        raise TypeError(f"{owner}: num_tasks must be an int, got {num_tasks!r}")
    if num_tasks < 0:
        raise ValueError(f"{owner}: num_tasks must be >= 0, got {num_tasks}")
    return int(num_tasks)


# ---------------------------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------------------------


def check_task_env(env: gym.Env[Any, Any], *, seed: int = 0) -> None:
    """Check that ``env`` is a Gymnasium env that follows the task-env protocol.

    Runs :func:`gymnasium.utils.env_checker.check_env` on ``env.unwrapped`` (render check
    skipped), then checks that ``sample_tasks`` returns a list of the requested length, is
    reproducible for one rng seed, differs between seeds and leaves the global RNGs alone; that
    tasks are hashable, picklable and equal after a pickle round trip; that ``set_task`` then
    ``task`` round-trips, that the ``task`` setter acts as ``set_task`` and that a non-task is
    rejected; and that two different tasks give different rewards for the same seed and actions.
    The env's task is restored at the end.

    Raises:
        TaskEnvError: on the first failed check, with a message that says what is wrong.
    """
    base = _unwrapped(env)
    name = type(base).__name__
    _check_members(base, name)
    _run_gymnasium_checker(base, name)
    tasks = _check_sampling(base, name, seed)
    with _restoring_task(base, name):
        _check_round_trip(base, name, tasks)
        _check_rejects_a_non_task(base, name)
        _check_reward_depends_on_task(base, name, tasks, seed)


def check_task_protocol(env: gym.Env[Any, Any], *, seed: int = 0) -> None:
    """The cheap part of :func:`check_task_env` that training relies on, run when a run starts.

    Checks that the members are there, that ``sample_tasks`` returns a list, reproducible for
    one rng seed, of hashable and picklable tasks, and that ``set_task`` then ``task`` (and the
    ``task`` setter) round-trip. Runs no episode and not gymnasium's ``check_env``.

    Raises:
        TaskEnvError: on the first failed check, with a message that says what is wrong.
    """
    base = _unwrapped(env)
    name = type(base).__name__
    _check_members(base, name)
    tasks = _check_sampling(base, name, seed)
    with _restoring_task(base, name):
        _check_round_trip(base, name, tasks)


@contextlib.contextmanager
def _restoring_task(env: Any, name: str) -> Iterator[None]:
    """Give ``env`` its task back after the block (a failure found matters more than this)."""
    original = _call(name, "reading .task", lambda: env.task)
    try:
        yield
    except TaskEnvError:
        with contextlib.suppress(Exception):
            env.set_task(original)
        raise
    _call(name, f"set_task({original!r}) (restoring its task)", partial(env.set_task, original))


def _unwrapped(env: object) -> Any:
    if not isinstance(env, gym.Env):
        raise TaskEnvError(
            f"{type(env).__name__} is not a gymnasium.Env; a task env is a gymnasium.Env "
            f"and {_HELP}"
        )
    return env.unwrapped


def _check_members(env: Any, name: str) -> None:
    for method in ("sample_tasks(num_tasks, rng)", "set_task(task)"):
        if not callable(getattr(env, method.split("(")[0], None)):
            raise TaskEnvError(f"{name} has no {method} method; {_HELP}")
    prop = getattr(type(env), "task", None)
    if prop is None and "task" not in vars(env):
        raise TaskEnvError(f"{name} has no task property; {_HELP}")
    if isinstance(prop, property) and prop.fset is None:
        raise TaskEnvError(
            f"{name}.task is a read-only property; give it a setter that calls set_task(task), "
            "so that vector envs can set one task per sub-env with set_attr('task', tasks)"
        )


def _run_gymnasium_checker(env: Any, name: str) -> None:
    try:
        check_env(env, skip_render_check=True)
    except Exception as error:
        raise TaskEnvError(
            f"{name} fails gymnasium's check_env: {type(error).__name__}: {error}"
        ) from error


def _check_sampling(env: Any, name: str, seed: int) -> list[Any]:
    global_rng = _global_rng_snapshot()
    tasks = _sample(env, name, seed)
    if _global_rng_snapshot() != global_rng:
        raise TaskEnvError(
            f"{name}.sample_tasks used the global RNG (numpy.random or random); "
            "draw tasks only from the rng argument"
        )
    for task in tasks:
        _check_task_is_data(name, task)
    again = _sample(env, name, seed)
    if again != tasks:
        raise TaskEnvError(
            f"{name}.sample_tasks is not reproducible: rng seed {seed} gave {tasks[:2]!r}... "
            f"and then {again[:2]!r}...; draw tasks only from the rng argument"
        )
    if _sample(env, name, seed + 1) == tasks:
        raise TaskEnvError(
            f"{name}.sample_tasks gave the same {_NUM_TASKS} tasks for rng seeds {seed} and "
            f"{seed + 1}; draw the tasks from the rng argument"
        )
    return tasks


def _call(name: str, what: str, function: Callable[[], T]) -> T:
    """``function()``, with an exception turned into a TaskEnvError that names ``what``."""
    try:
        return function()
    except Exception as error:
        raise TaskEnvError(f"{name}: {what} raised {type(error).__name__}: {error}") from error


def _sample(env: Any, name: str, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    tasks = _call(
        name, f"sample_tasks({_NUM_TASKS}, rng)", lambda: env.sample_tasks(_NUM_TASKS, rng)
    )
    if not isinstance(tasks, list):
        raise TaskEnvError(
            f"{name}.sample_tasks({_NUM_TASKS}, rng) returned a {type(tasks).__name__}; "
            f"expected a list of {_NUM_TASKS} tasks"
        )
    if len(tasks) != _NUM_TASKS:
        raise TaskEnvError(
            f"{name}.sample_tasks({_NUM_TASKS}, rng) returned {len(tasks)} tasks; "
            f"expected a list of {_NUM_TASKS} tasks"
        )
    return tasks


def _global_rng_snapshot() -> bytes:
    return pickle.dumps((np.random.get_state(), random.getstate()))


def _check_task_is_data(name: str, task: object) -> None:
    try:
        hash(task)
    except TypeError as error:
        raise TaskEnvError(
            f"{name}'s task {task!r} is not hashable ({error}); {_DATA_HELP}"
        ) from error
    try:
        restored = pickle.loads(pickle.dumps(task))
    except Exception as error:
        raise TaskEnvError(
            f"{name}'s task {task!r} is not picklable ({type(error).__name__}: {error}); "
            f"tasks travel to subprocess vector envs, so {_DATA_HELP}"
        ) from error
    if not _equal(restored, task):
        raise TaskEnvError(
            f"{name}'s task {task!r} is not equal to itself after a pickle round trip "
            f"(got {restored!r}); {_DATA_HELP}"
        )


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _check_round_trip(env: Any, name: str, tasks: list[Any]) -> None:
    for task in tasks[:2]:
        _call(
            name,
            f"set_task({task!r}) on a task from its own sample_tasks",
            partial(env.set_task, task),
        )
        current = _call(name, "reading .task", lambda: env.task)
        if not _equal(current, task):
            raise TaskEnvError(
                f"{name}.set_task({task!r}) then {name}.task gave {current!r}; "
                "the task property must return the task last set"
            )
    try:
        env.task = tasks[0]
    except AttributeError as error:
        raise TaskEnvError(
            f"{name}.task cannot be assigned ({error}); give the task property a setter that "
            "calls set_task(task), so that vector envs can use set_attr('task', tasks)"
        ) from error
    except Exception as error:
        raise TaskEnvError(
            f"{name}: `env.task = {tasks[0]!r}` raised {type(error).__name__}: {error}"
        ) from error
    if not _equal(_call(name, "reading .task", lambda: env.task), tasks[0]):
        raise TaskEnvError(f"{name}.task = {tasks[0]!r} did not set the task")


def _check_rejects_a_non_task(env: Any, name: str) -> None:
    try:
        env.set_task(object())
    except (TypeError, ValueError):
        return
    except Exception as error:
        raise TaskEnvError(
            f"{name}.set_task(object()) raised {type(error).__name__}: {error}; reject a task "
            "of the wrong type with a TypeError (and one outside the distribution with a "
            "ValueError)"
        ) from error
    raise TaskEnvError(
        f"{name}.set_task accepted object(), which is not a task; reject a task of the wrong "
        "type with a TypeError (and one outside the distribution with a ValueError)"
    )


def _check_reward_depends_on_task(env: Any, name: str, tasks: list[Any], seed: int) -> None:
    first = tasks[0]
    second = next((task for task in tasks if not _equal(task, first)), None)
    if second is None:
        raise TaskEnvError(
            f"{name}.sample_tasks({_NUM_TASKS}, rng) returned {_NUM_TASKS} equal tasks; "
            "the distribution needs at least two different tasks"
        )
    actions = _fixed_actions(env, seed)
    rollout = partial(_rollout_with, env, name, seed=seed, actions=actions)
    rewards_first = rollout(first, use_setter=False)
    if rollout(first, use_setter=False) != rewards_first:
        raise TaskEnvError(
            f"{name} is not deterministic: the same task, seed {seed} and actions gave "
            "different rewards; draw all randomness from self.np_random (seeded by reset)"
        )
    rewards_second = rollout(second, use_setter=False)
    if rewards_second == rewards_first:
        raise TaskEnvError(
            f"{name}'s rewards do not depend on the task: tasks {first!r} and {second!r} gave "
            f"the same rewards over {len(rewards_first)} steps for seed {seed} and the same "
            "actions; set_task(task) must change the reward (or dynamics)"
        )
    if rollout(second, use_setter=True) != rewards_second:
        raise TaskEnvError(
            f"{name}: `env.task = task` does not act as set_task(task) (different rewards for "
            "the same task, seed and actions); make the task setter call set_task"
        )


def _fixed_actions(env: Any, seed: int) -> list[Any]:
    space = copy.deepcopy(env.action_space)
    space.seed(seed)
    return [space.sample() for _ in range(_NUM_STEPS)]


def _rollout_with(
    env: Any, name: str, task: object, *, seed: int, actions: list[Any], use_setter: bool
) -> list[float]:
    if use_setter:
        _call(name, f"`env.task = {task!r}`", partial(setattr, env, "task", task))
    else:
        _call(name, f"set_task({task!r})", partial(env.set_task, task))
    obs, _ = _call(name, f"reset(seed={seed}) with task {task!r}", partial(env.reset, seed=seed))
    _check_observation(env, name, obs, f"reset(seed={seed}) with task {task!r}")
    rewards: list[float] = []
    for t, action in enumerate(actions, start=1):
        where = f"step {t} after reset(seed={seed}) with task {task!r}"
        obs, reward, terminated, truncated, _ = _call(name, where, partial(env.step, action))
        _check_observation(env, name, obs, where)
        if not _finite_real(reward):
            raise TaskEnvError(
                f"{name}: {where} gave the reward {reward!r}; a reward must be a finite number"
            )
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return rewards


def _finite_real(value: object) -> bool:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return isinstance(value, numbers.Real) and math.isfinite(float(value))


def _check_observation(env: Any, name: str, obs: Any, where: str) -> None:
    """An observation must be finite and inside ``observation_space``."""
    numeric = _is_array(obs) and np.issubdtype(np.asarray(obs).dtype, np.number)
    shown = np.array2string(np.asarray(obs), threshold=8, precision=4) if numeric else repr(obs)
    if numeric and not np.all(np.isfinite(np.asarray(obs, dtype=np.float64))):
        raise TaskEnvError(
            f"{name}: {where} gave a non-finite observation {shown}; observations must be "
            "finite numbers"
        )
    if not _space_contains(env.observation_space, obs):
        raise TaskEnvError(
            f"{name}: {where} gave the observation {shown}, outside its observation_space "
            f"{env.observation_space}"
        )


def _space_contains(space: gym.Space[Any], value: Any) -> bool:
    """``space.contains(value)``, False where the space's own test raises."""
    try:
        return bool(space.contains(value))
    except Exception:
        return False


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray | numbers.Number)
