"""Task envs: tasks, rejection of bad tasks, determinism, pickling, vector envs, Navigation2D."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from metarl.envs import DirectionTask, GoalTask, NavigationTask, VelocityTask
from metarl.envs.navigation import Navigation2DVectorEnv

from metarl import envs

NAV = "metarl/Navigation2D-v0"
TASK_TYPES = {
    "metarl/Navigation2D-v0": NavigationTask,
    "metarl/HalfCheetahVel-v0": VelocityTask,
    "metarl/HalfCheetahDir-v0": DirectionTask,
    "metarl/AntVel-v0": VelocityTask,
    "metarl/AntDir-v0": DirectionTask,
    "metarl/AntGoal-v0": GoalTask,
}


# --- tasks -------------------------------------------------------------------------------------
def test_task_fields_are_clean_python_numbers() -> None:
    velocity = VelocityTask(np.float32(1.5))
    assert type(velocity.velocity) is float and repr(velocity) == "VelocityTask(velocity=1.5)"
    direction = DirectionTask(np.int64(-1))
    assert type(direction.direction) is int and repr(direction) == "DirectionTask(direction=-1)"
    goal = NavigationTask(goal=np.array([0.25, -0.5]))
    assert goal.goal == (0.25, -0.5) and all(type(v) is float for v in goal.goal)
    assert GoalTask(goal=[1, 2]) == GoalTask(goal=(1.0, 2.0))
    assert pickle.loads(pickle.dumps(goal)) == goal and hash(goal) == hash(
        NavigationTask((0.25, -0.5))
    )


@pytest.mark.parametrize(
    "make_task",
    [
        lambda: VelocityTask("fast"),
        lambda: VelocityTask(None),
        lambda: DirectionTask(0.5),
        lambda: NavigationTask(goal=(1.0, 2.0, 3.0)),
        lambda: GoalTask(goal=0.5),
    ],
)
def test_malformed_tasks_are_rejected_when_built(make_task) -> None:
    with pytest.raises(TypeError, match=r"(VelocityTask|DirectionTask|NavigationTask|GoalTask): "):
        make_task()


@pytest.mark.parametrize("env_id", sorted(TASK_TYPES))
def test_sampled_tasks_follow_the_distribution(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(200, np.random.default_rng(0))
    assert len(tasks) == 200 and all(type(t) is TASK_TYPES[env_id] for t in tasks)
    assert tasks == env.sample_tasks(200, np.random.default_rng(0))
    assert tasks != env.sample_tasks(200, np.random.default_rng(1))
    assert env.sample_tasks(0, np.random.default_rng(0)) == []
    values = np.array([np.ravel(next(iter(vars(t).values()))) for t in tasks], dtype=float)
    low, high = {
        NavigationTask: (-0.5, 0.5),
        VelocityTask: (0.0, 2.0) if "Cheetah" in env_id else (0.0, 3.0),
        DirectionTask: (-1, 1),
        GoalTask: (-3.0, 3.0),
    }[TASK_TYPES[env_id]]
    assert values.min() >= low and values.max() <= high
    assert values.min() < low + 0.2 * (high - low) and values.max() > high - 0.2 * (high - low)
    if TASK_TYPES[env_id] is DirectionTask:
        assert set(values.ravel()) == {-1.0, 1.0}


BAD_TASKS = [
    ("metarl/HalfCheetahVel-v0", VelocityTask(2.5), ValueError,
     r"HalfCheetahVel: goal velocity 2.5 is outside \[0.0, 2.0\]"),
    ("metarl/HalfCheetahVel-v0", VelocityTask(-0.1), ValueError, r"outside \[0.0, 2.0\]"),
    ("metarl/HalfCheetahVel-v0", VelocityTask(float("nan")), ValueError, r"nan is outside"),
    ("metarl/HalfCheetahVel-v0", DirectionTask(1), TypeError,
     r"HalfCheetahVel: task must be a VelocityTask, got DirectionTask\(direction=1\)"),
    ("metarl/HalfCheetahVel-v0", 1.0, TypeError, r"task must be a VelocityTask, got 1.0 \(float\)"),
    ("metarl/HalfCheetahDir-v0", DirectionTask(0), ValueError,
     r"HalfCheetahDir: direction 0 is not one of \(-1, 1\)"),
    ("metarl/AntVel-v0", VelocityTask(3.5), ValueError, r"AntVel: goal velocity 3.5 is outside"),
    ("metarl/AntDir-v0", DirectionTask(2), ValueError, r"AntDir: direction 2 is not one of"),
    ("metarl/AntGoal-v0", GoalTask(goal=(4.0, 0.0)), ValueError,
     r"AntGoal: goal \(4.0, 0.0\) is outside \[-3.0, 3.0\]\^2"),
    ("metarl/AntGoal-v0", NavigationTask(goal=(0.0, 0.0)), TypeError,
     r"AntGoal: task must be a GoalTask"),
    (NAV, NavigationTask(goal=(0.0, 0.6)), ValueError,
     r"Navigation2D: goal \(0.0, 0.6\) is outside \[-0.5, 0.5\]\^2"),
    (NAV, (0.1, 0.1), TypeError, r"Navigation2D: task must be a NavigationTask"),
]  # fmt: skip


@pytest.mark.parametrize(("env_id", "task", "error", "message"), BAD_TASKS)
def test_set_task_rejects_invalid_tasks(env_id: str, task, error: type, message: str) -> None:
    env = gym.make(env_id)
    before = env.unwrapped.task
    with pytest.raises(error, match=message):
        env.unwrapped.set_task(task)
    with pytest.raises(error, match=message):
        env.set_wrapper_attr("task", task)  # the property setter validates too
    assert env.unwrapped.task == before


@pytest.mark.parametrize("env_id", sorted(TASK_TYPES))
def test_make_accepts_a_task_and_validates_it(env_id: str) -> None:
    env = gym.make(env_id)
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(5))[0]
    assert gym.make(env_id, task=task).unwrapped.task == task
    with pytest.raises(TypeError, match="task must be a"):
        gym.make(env_id, task=object())


# --- determinism and pickling ------------------------------------------------------------------
def _rollout(env: gym.Env, seed: int, actions: np.ndarray) -> list:
    steps = [env.reset(seed=seed)[0]]
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        steps.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return steps


def _assert_same_rollout(first: list, second: list) -> None:
    assert len(first) == len(second)
    np.testing.assert_array_equal(first[0], second[0])
    for a, b in zip(first[1:], second[1:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]


@pytest.mark.parametrize("env_id", sorted(TASK_TYPES))
def test_same_seed_and_actions_give_identical_rollouts(env_id: str) -> None:
    first, second = gym.make(env_id), gym.make(env_id)
    task = first.unwrapped.sample_tasks(1, np.random.default_rng(1))[0]
    first.unwrapped.set_task(task)
    second.set_wrapper_attr("task", task)
    space = first.action_space
    space.seed(0)
    actions = np.array([space.sample() for _ in range(30)])
    _assert_same_rollout(_rollout(first, 7, actions), _rollout(second, 7, actions))
    other = _rollout(first, 8, actions)  # another seed: another start (except Navigation2D)
    if env_id != NAV:
        assert not np.array_equal(other[0], _rollout(second, 7, actions)[0])


@pytest.mark.parametrize("env_id", sorted(TASK_TYPES))
def test_envs_pickle_with_their_current_task(env_id: str) -> None:
    env = gym.make(env_id)
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(2))[0]
    env.unwrapped.set_task(task)
    for obj in (env, env.unwrapped):
        copy = pickle.loads(pickle.dumps(obj))
        assert copy.unwrapped.task == task
        actions = np.zeros((5, *env.action_space.shape), dtype=np.float32)
        _assert_same_rollout(_rollout(copy, 3, actions), _rollout(env, 3, actions))


# --- vector envs with one task per sub-env -----------------------------------------------------
def test_sync_vector_env_sets_one_task_per_sub_env_through_make_wrappers() -> None:
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(NAV)] * 3)
    tasks = [
        NavigationTask(goal=(0.5, 0.0)),
        NavigationTask((0.0, -0.5)),
        NavigationTask((0.1, 0.1)),
    ]
    vec.set_attr("task", tasks)
    assert vec.get_attr("task") == tuple(tasks)
    assert [env.unwrapped.task for env in vec.envs] == tasks
    vec.reset(seed=0)
    _, rewards, *_ = vec.step(np.zeros((3, 2), dtype=np.float32))
    np.testing.assert_allclose(rewards, [-0.5, -0.5, -np.hypot(0.1, 0.1)])
    vec.set_attr("task", tasks[2])  # one task for all
    assert vec.get_attr("task") == (tasks[2],) * 3


@pytest.mark.filterwarnings("ignore:.*ERROR:")  # the worker reports the rejected task
def test_async_vector_env_with_per_env_tasks() -> None:
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make("metarl/HalfCheetahVel-v0")] * 2)
    try:
        tasks = [VelocityTask(0.0), VelocityTask(2.0)]
        vec.set_attr("task", tasks)
        assert vec.get_attr("task") == tuple(tasks)
        vec.reset(seed=0)
        _, rewards, _, _, info = vec.step(np.zeros((2, 6), dtype=np.float32))
        assert list(info["task"]) == tasks
        velocity = info["x_velocity"]
        np.testing.assert_allclose(rewards, [-abs(velocity[0]), -abs(velocity[1] - 2.0)])
        with pytest.raises(ValueError, match=r"goal velocity 5.0 is outside"):
            vec.set_attr("task", VelocityTask(5.0))
    finally:
        vec.close()


def test_async_navigation_matches_batched() -> None:
    tasks = [NavigationTask(goal=(0.3, -0.2)), NavigationTask(goal=(-0.4, 0.45))]
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make(NAV)] * 2)
    batched = gym.make_vec(NAV, num_envs=2, vectorization_mode="vector_entry_point")
    try:
        vec.set_attr("task", tasks)
        batched.set_attr("task", tasks)
        _assert_same_vector_rollouts(vec, batched, np.random.default_rng(0), steps=120)
    finally:
        vec.close()


# --- Navigation2D ------------------------------------------------------------------------------
def test_navigation_reward_and_termination_by_hand() -> None:
    env = gym.make(NAV, task=NavigationTask(goal=(0.15, -0.05)))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.tolist() == [0.0, 0.0]
    obs, reward, terminated, truncated, _ = env.step(np.array([0.3, -0.02]))  # x clipped to 0.1
    assert obs.tolist() == pytest.approx([0.1, -0.02])
    assert reward == pytest.approx(-np.sqrt(0.05**2 + 0.03**2), abs=1e-15)
    assert not terminated and not truncated
    _, reward, terminated, _, _ = env.step(np.array([0.045, -0.025]))  # within 0.01 of the goal
    assert reward == pytest.approx(-np.sqrt(0.005**2 + 0.005**2), abs=1e-15) and terminated


def test_navigation_truncates_at_100_steps() -> None:
    env = gym.make(NAV)
    env.reset(seed=0)
    results = [env.step(np.zeros(2, dtype=np.float32)) for _ in range(100)]
    assert [r[3] for r in results] == [False] * 99 + [True]
    assert not any(r[2] for r in results)


def test_navigation_observation_space_allows_leaving_the_goal_box() -> None:
    env = gym.make(NAV)
    env.reset(seed=0)
    for _ in range(10):
        obs, *_ = env.step(np.array([0.1, 0.1], dtype=np.float32))
    assert obs == pytest.approx([1.0, 1.0]) and env.observation_space.contains(obs)


def test_make_with_module_prefix() -> None:
    env = gym.make("metarl.envs:metarl/Navigation2D-v0")
    assert type(env.unwrapped).__name__ == "Navigation2DEnv"
    assert env.spec is not None and env.spec.max_episode_steps == 100


def test_make_vec_gives_the_batched_env() -> None:
    vec = gym.make_vec(NAV, num_envs=4, vectorization_mode="vector_entry_point")
    assert isinstance(vec, Navigation2DVectorEnv) and isinstance(vec, gym.vector.VectorEnv)
    assert vec.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert vec.max_episode_steps == 100 and vec.num_envs == 4
    assert vec.observation_space.shape == (4, 2) and vec.action_space.shape == (4, 2)


def _goal_seeking_actions(obs: np.ndarray, goals: np.ndarray, rng: np.random.Generator):
    """Half the sub-envs head for their goal (terminating early), the others wander."""
    actions = rng.uniform(-0.1, 0.1, size=obs.shape).astype(np.float32)
    seek = np.arange(len(obs)) % 2 == 0
    actions[seek] = np.clip(goals[seek] - obs[seek], -0.1, 0.1) * rng.uniform(0.7, 1.3)
    return actions


def _assert_same_vector_rollouts(reference, batched, rng, *, steps: int) -> dict[str, int]:
    goals = np.array([task.goal for task in batched.get_attr("task")])
    obs_ref, _ = reference.reset(seed=0)
    obs, _ = batched.reset(seed=0)
    np.testing.assert_array_equal(obs, obs_ref)
    counts = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        actions = _goal_seeking_actions(obs, goals, rng)
        ref = reference.step(actions)
        out = batched.step(actions)
        for got, want in zip(out[:4], ref[:4], strict=True):
            np.testing.assert_array_equal(got, want)
        assert out[0].dtype == np.float32 and out[1].dtype == np.float64
        obs = out[0]
        counts["terminated"] += int(out[2].sum())
        counts["truncated"] += int(out[3].sum())
    return counts


def test_batched_navigation_equals_single_envs() -> None:
    num_envs = 8
    rng = np.random.default_rng(0)
    tasks = envs.navigation.GOAL_DISTRIBUTION.sample("test", num_envs, rng)
    reference = gym.vector.SyncVectorEnv([lambda: gym.make(NAV)] * num_envs)  # NEXT_STEP mode
    batched = gym.make_vec(NAV, num_envs=num_envs, vectorization_mode="vector_entry_point")
    reference.set_attr("task", tasks)
    batched.set_attr("task", tasks)
    counts = _assert_same_vector_rollouts(reference, batched, rng, steps=330)
    assert counts["terminated"] >= 8  # early terminations, then autoresets, were compared
    assert counts["truncated"] >= 4  # and time-limit truncations at step 100


def test_batched_navigation_truncates_and_autoresets_on_the_next_step() -> None:
    vec = Navigation2DVectorEnv(2, tasks=[NavigationTask(goal=(-0.5, -0.5))] * 2)
    vec.reset(seed=0)
    actions = np.full((2, 2), 0.01, dtype=np.float32)
    for step in range(1, 101):
        obs, rewards, terminated, truncated, _ = vec.step(actions)
        assert truncated.tolist() == [step == 100] * 2 and not terminated.any()
    np.testing.assert_allclose(obs, 1.0, rtol=1e-6)
    obs, rewards, terminated, truncated, _ = vec.step(actions)  # autoreset step: action ignored
    assert obs.tolist() == [[0.0, 0.0]] * 2 and rewards.tolist() == [0.0, 0.0]
    assert not terminated.any() and not truncated.any()
    obs, *_ = vec.step(actions)
    np.testing.assert_allclose(obs, 0.01, rtol=1e-6)


def test_batched_navigation_tasks_and_reset_mask() -> None:
    vec = Navigation2DVectorEnv(3)
    tasks = vec.sample_tasks(3, np.random.default_rng(0))
    vec.set_tasks(tasks)
    assert vec.tasks == tuple(tasks) and vec.get_attr("task") == tuple(tasks)
    with pytest.raises(ValueError, match=r"one task per sub-env \(3\), got 2"):
        vec.set_tasks(tasks[:2])
    with pytest.raises(ValueError, match=r"Navigation2D: goal \(0.0, 0.7\) is outside"):
        vec.set_attr("task", [*tasks[:2], NavigationTask(goal=(0.0, 0.7))])
    assert vec.tasks == tuple(tasks)  # unchanged after a rejected update
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 2\)"):
        vec.step(np.zeros((2, 2)))
    vec.reset(seed=0)
    vec.step(np.full((3, 2), 0.1))
    obs, _ = vec.reset(options={"reset_mask": np.array([True, False, True])})
    np.testing.assert_allclose(obs, [[0.0, 0.0], [0.1, 0.1], [0.0, 0.0]], rtol=1e-6)
