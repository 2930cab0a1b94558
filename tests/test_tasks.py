"""The task protocol: check_task_env on every registered env, on broken envs, on a user's env."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from readme_example import own_env_module, own_env_source

from metarl import envs
from metarl.tasks import (
    TaskEnv,
    TaskEnvError,
    check_task_env,
    check_task_protocol,
    real_field,
    real_pair_field,
    require_in_range,
    require_num_tasks,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*old step API:DeprecationWarning"),
]

REGISTERED = sorted(env_id for env_id in gym.registry if env_id.startswith("metarl/"))


# README's "Your own task env" example, the classes the tests below build on.
_MINE = own_env_module()
TargetTask = _MINE.TargetTask
LineTargetEnv = _MINE.LineTargetEnv


def test_readme_example_passes_the_checker_and_vectorizes() -> None:
    env = LineTargetEnv()
    check_task_env(env)
    assert isinstance(env, TaskEnv)
    tasks = env.sample_tasks(2, np.random.default_rng(0))
    vec = gym.vector.SyncVectorEnv([LineTargetEnv, LineTargetEnv])
    vec.set_attr("task", tasks)
    assert vec.get_attr("task") == tuple(tasks)
    vec.reset(seed=0)
    _, rewards, *_ = vec.step(np.zeros((2, 1), dtype=np.float32))
    np.testing.assert_allclose(rewards, [-abs(t.target) for t in tasks])
    with pytest.raises(ValueError, match=r"LineTarget: target 3.0 is outside \[-1.0, 1.0\]"):
        env.set_task(TargetTask(3.0))


def test_readme_own_env_section_checks_itself() -> None:
    """README's example ends by running the checker on its env when run as a script."""
    assert "check_task_env(LineTargetEnv())" in own_env_source()
    check_task_env(LineTargetEnv())


@pytest.mark.parametrize("env_id", REGISTERED)
def test_every_registered_env_passes_the_checker(env_id: str) -> None:
    env = gym.make(env_id)
    original = env.unwrapped.task
    check_task_env(env, seed=3)
    assert env.unwrapped.task == original  # the checker restores the task
    assert isinstance(env.unwrapped, TaskEnv)


def test_registry_holds_all_our_envs() -> None:
    assert set(REGISTERED) >= set(envs.ENV_IDS)
    assert len(envs.ENV_IDS) == 6


# --- deliberately broken envs ------------------------------------------------------------------
class NoSetTaskEnv(LineTargetEnv):
    set_task = None  # type: ignore[assignment]


class ReadOnlyTaskEnv(LineTargetEnv):
    @property
    def task(self) -> TargetTask:  # type: ignore[override]
        return self._task


@dataclass(frozen=True)
class CallableTask:
    target: float
    shape: Any = lambda x: x  # a lambda cannot be pickled


class UnpicklableTaskEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:  # type: ignore[override]
        return [CallableTask(float(t)) for t in rng.uniform(-1, 1, size=num_tasks)]


class IgnoredTaskEnv(LineTargetEnv):
    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, -abs(self._x), terminated, truncated, info


class GlobalRngEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[TargetTask]:
        return [TargetTask(t) for t in np.random.uniform(-1.0, 1.0, size=num_tasks)]


class TupleTasksEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[TargetTask]:
        return tuple(super().sample_tasks(num_tasks, rng))  # type: ignore[return-value]


class AcceptsAnythingEnv(LineTargetEnv):
    def set_task(self, task: Any) -> None:
        self._task = task


class ObjectTask:  # no __eq__: a copy is never equal to the original
    def __init__(self, target: float) -> None:
        self.target = target


class ObjectTaskEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:  # type: ignore[override]
        return [ObjectTask(t) for t in rng.uniform(-1, 1, size=num_tasks)]


@dataclass(frozen=True)
class ArrayTask:
    target: np.ndarray  # frozen, but an array field makes it unhashable


class ArrayTaskEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:  # type: ignore[override]
        return [ArrayTask(rng.uniform(-1, 1, size=1)) for _ in range(num_tasks)]


class BadStepEnv(LineTargetEnv):
    def step(self, action):
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, info  # four values: not the Gymnasium API


class WrongSignatureEnv(LineTargetEnv):
    def sample_tasks(self, num_tasks: int) -> list[TargetTask]:  # type: ignore[override]
        return [TargetTask(0.0)] * num_tasks


class RejectsOwnTasksEnv(LineTargetEnv):
    def set_task(self, task: TargetTask) -> None:
        raise ValueError("no")


class NaNRewardEnv(LineTargetEnv):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self._task.target < 0 else reward, terminated, truncated, info


class InfObservationEnv(LineTargetEnv):
    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        obs = np.array([np.inf if self._task.target < 0 else self._x], dtype=np.float32)
        return obs, reward, terminated, truncated, info


class OutsideBoxEnv(LineTargetEnv):
    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        obs = np.array([5.0 if self._task.target < 0 else self._x], dtype=np.float32)
        return obs, reward, terminated, truncated, info


class StepRaisesEnv(LineTargetEnv):
    def step(self, action):
        if self._task.target < 0:
            raise RuntimeError("boom in step")
        return super().step(action)


class ResetRaisesEnv(LineTargetEnv):
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._task.target < 0:
            raise KeyError("boom in reset")
        return super().reset(seed=seed, options=options)


class SetTaskCrashesOnANonTaskEnv(LineTargetEnv):
    def set_task(self, task: TargetTask) -> None:
        require_in_range("LineTarget", "target", task.target, -1.0, 1.0)  # AttributeError
        self._task = task


BROKEN = [
    (NaNRewardEnv, r"NaNRewardEnv: step 1 after reset\(seed=0\) with task .* gave the reward nan"),
    (InfObservationEnv, r"InfObservationEnv: step 1 .* gave a non-finite observation \[inf\]"),
    (OutsideBoxEnv, r"OutsideBoxEnv: step 1 .* gave the observation \[5.\], outside its obs"),
    (StepRaisesEnv, r"StepRaisesEnv: step 1 after .* raised RuntimeError: boom in step"),
    (ResetRaisesEnv, r"ResetRaisesEnv: reset\(seed=0\) with task .* raised KeyError"),
    (
        SetTaskCrashesOnANonTaskEnv,
        r"set_task\(object\(\)\) raised AttributeError: .*; reject a task of the wrong type",
    ),
    (WrongSignatureEnv, r"WrongSignatureEnv: sample_tasks\(10, rng\) raised TypeError"),
    (
        RejectsOwnTasksEnv,
        r"set_task\(TargetTask\(.*\)\) on a task from its own sample_tasks raised",
    ),
    (NoSetTaskEnv, r"NoSetTaskEnv has no set_task\(task\) method; a task env needs sample_tasks"),
    (ReadOnlyTaskEnv, r"ReadOnlyTaskEnv.task is a read-only property; give it a setter"),
    (UnpicklableTaskEnv, r"UnpicklableTaskEnv's task CallableTask\(.*\) is not picklable"),
    (IgnoredTaskEnv, r"IgnoredTaskEnv's rewards do not depend on the task"),
    (GlobalRngEnv, r"GlobalRngEnv.sample_tasks used the global RNG"),
    (TupleTasksEnv, r"returned a tuple; expected a list of 10 tasks"),
    (AcceptsAnythingEnv, r"AcceptsAnythingEnv.set_task accepted object\(\), which is not a task"),
    (ObjectTaskEnv, r"ObjectTaskEnv's task .* is not equal to itself after a pickle round trip"),
    (ArrayTaskEnv, r"ArrayTaskEnv's task ArrayTask\(.*\) is not hashable"),
    (BadStepEnv, r"BadStepEnv fails gymnasium's check_env"),
]


@pytest.mark.parametrize(("env_type", "message"), BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_checker_rejects_broken_envs_with_a_clear_message(env_type: type, message: str) -> None:
    with pytest.raises(TaskEnvError, match=message):
        check_task_env(env_type())


def test_checker_names_the_readme_for_a_missing_method() -> None:
    with pytest.raises(TaskEnvError) as error:
        check_task_env(NoSetTaskEnv())
    assert "see README 'Your own task env'" in str(error.value)
    assert "sample_tasks(num_tasks, rng), set_task(task) and a task property" in str(error.value)


def test_checker_rejects_a_non_env() -> None:
    with pytest.raises(TaskEnvError, match=r"object is not a gymnasium\.Env"):
        check_task_env(object())  # type: ignore[arg-type]


def test_protocol_check_runs_no_episode_but_checks_what_training_needs() -> None:
    check_task_protocol(LineTargetEnv())
    check_task_protocol(StepRaisesEnv())  # no episode: the full checker finds that one
    check_task_protocol(AcceptsAnythingEnv())  # rejecting a non-task is not needed to train
    for env_type, message in [
        (NoSetTaskEnv, r"NoSetTaskEnv has no set_task\(task\) method"),
        (ReadOnlyTaskEnv, r"ReadOnlyTaskEnv.task is a read-only property"),
        (UnpicklableTaskEnv, r"is not picklable"),
        (GlobalRngEnv, r"used the global RNG"),
        (RejectsOwnTasksEnv, r"on a task from its own sample_tasks raised ValueError"),
    ]:
        with pytest.raises(TaskEnvError, match=message):
            check_task_protocol(env_type())
    env = LineTargetEnv()
    before = env.task
    check_task_protocol(env, seed=5)
    assert env.task == before  # restored


# --- validation helpers ------------------------------------------------------------------------
def test_real_field_returns_python_floats_and_rejects_non_numbers() -> None:
    value = real_field("T", "x", np.float32(0.5))
    assert type(value) is float and value == 0.5
    for bad in ("1.0", True, None, np.array([1.0])):
        with pytest.raises(TypeError, match="T: x must be a real number"):
            real_field("T", "x", bad)


def test_real_pair_field_accepts_pairs_and_rejects_other_shapes() -> None:
    assert real_pair_field("T", "goal", np.array([0.1, 0.2])) == (0.1, 0.2)
    assert real_pair_field("T", "goal", [1, 2]) == (1.0, 2.0)
    for bad in ((1.0,), (1.0, 2.0, 3.0), np.zeros((2, 2)), "ab", 1.0):
        with pytest.raises(TypeError, match=r"T: goal must be a pair \(x, y\)"):
            real_pair_field("T", "goal", bad)
    with pytest.raises(TypeError, match=r"goal\[1\] must be a real number"):
        real_pair_field("T", "goal", (1.0, "b"))


def test_require_num_tasks() -> None:
    assert require_num_tasks("E", np.int64(3)) == 3
    with pytest.raises(ValueError, match="E: num_tasks must be >= 0, got -1"):
        require_num_tasks("E", -1)
    with pytest.raises(TypeError, match="E: num_tasks must be an int"):
        require_num_tasks("E", 2.0)
