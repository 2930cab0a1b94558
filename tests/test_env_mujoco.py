"""MuJoCo task envs: reward formulas by hand, task effects, the model equals Gymnasium's v5 one."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.envs.mujoco.mujoco_env import expand_model_path
from metarl.envs import DirectionTask, GoalTask, VelocityTask
from metarl.envs.mujoco_base import compile_model

import metarl  # noqa: F401  (registers the metarl/ envs)

DT = 0.05  # 5 frames of 0.01 s, for both models
CHEETAH_ACTION = np.array([0.5, -0.3, 0.2, 0.1, -0.8, 0.4], dtype=np.float32)
ANT_ACTION = np.array([0.3, -0.6, 0.9, -0.2, 0.1, 0.5, -0.7, 0.4], dtype=np.float32)


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Raw HalfCheetah-v5 makes MuJoCo write MUJOCO_LOG.TXT into the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the settotalmass deprecation warning ------------------------------------------------------
def test_making_half_cheetah_envs_prints_no_settotalmass_warning(
    in_tmp_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for env_id in ("metarl/HalfCheetahVel-v0", "metarl/HalfCheetahDir-v0"):
            gym.make(env_id).reset(seed=0)
    assert not [w for w in caught if "settotalmass" in str(w.message)]
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err
    assert not (in_tmp_dir / "MUJOCO_LOG.TXT").exists()
    # the control: Gymnasium's own loading path does print it (MuJoCo's C warning handler)
    mujoco.MjModel.from_xml_path(expand_model_path("half_cheetah.xml"))
    assert "settotalmass" in "".join(capfd.readouterr())


def _numeric_fields(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    fields = {}
    for name in dir(model):
        value = getattr(model, name, None) if not name.startswith("_") else None
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            fields[name] = value
    return fields


def test_half_cheetah_model_equals_gymnasiums(in_tmp_dir: Path) -> None:
    raw = mujoco.MjModel.from_xml_path(expand_model_path("half_cheetah.xml"))
    ours = gym.make("metarl/HalfCheetahVel-v0").unwrapped.model
    assert ours.body_mass.sum() == pytest.approx(14.0, abs=1e-12)
    raw_fields, our_fields = _numeric_fields(raw), _numeric_fields(ours)
    assert len(raw_fields) > 100 and raw_fields.keys() == our_fields.keys()
    for name in ("body_mass", "body_inertia", "body_subtreemass", "dof_invweight0", "geom_size"):
        np.testing.assert_allclose(our_fields[name], raw_fields[name], rtol=0, atol=1e-12)
    differing = [n for n in raw_fields if not np.allclose(our_fields[n], raw_fields[n], 0, 1e-12)]
    assert differing == []
    assert compile_model(expand_model_path("ant.xml")).nbody == 14  # no settotalmass: unchanged


@pytest.mark.parametrize(
    ("ours_id", "raw_id"),
    [("metarl/HalfCheetahVel-v0", "HalfCheetah-v5"), ("metarl/AntVel-v0", "Ant-v5")],
)
def test_rollout_equals_raw_v5_env(in_tmp_dir: Path, ours_id: str, raw_id: str) -> None:
    ours, raw = gym.make(ours_id), gym.make(raw_id)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(100, *raw.action_space.shape)).astype(np.float32)
    np.testing.assert_array_equal(ours.reset(seed=4)[0], raw.reset(seed=4)[0])
    for action in actions:
        obs, _, terminated, _, _ = ours.step(action)
        raw_obs, _, raw_terminated, _, _ = raw.step(action)
        np.testing.assert_allclose(obs, raw_obs, rtol=0, atol=1e-10)
        assert terminated == raw_terminated


# --- reward formulas against hand computation --------------------------------------------------
def _cheetah_step(env_id: str, task: object) -> tuple[float, dict, float]:
    env = gym.make(env_id, task=task).unwrapped
    env.reset(seed=0)
    qpos, qvel = env.init_qpos.copy(), np.zeros(env.model.nv)
    qpos[0], qvel[0], qvel[3] = 0.5, 1.2, -2.0
    env.set_state(qpos, qvel)
    x_before = float(env.data.qpos[0])
    _, reward, _, _, info = env.step(CHEETAH_ACTION)
    velocity = (float(env.data.qpos[0]) - x_before) / DT
    return reward, info, velocity


def test_half_cheetah_vel_reward_by_hand() -> None:
    reward, info, velocity = _cheetah_step("metarl/HalfCheetahVel-v0", VelocityTask(1.3))
    ctrl = 0.05 * float(np.sum(CHEETAH_ACTION.astype(np.float64) ** 2))
    assert abs(velocity) > 0.1  # a real displacement, so the test can tell formulas apart
    assert reward == pytest.approx(-abs(velocity - 1.3) - ctrl, abs=1e-6)
    assert info["reward_forward"] == pytest.approx(-abs(velocity - 1.3), abs=1e-12)
    assert info["reward_ctrl"] == pytest.approx(-ctrl, abs=1e-6)
    assert info["task"] == VelocityTask(1.3)


@pytest.mark.parametrize("direction", [-1, 1])
def test_half_cheetah_dir_reward_by_hand(direction: int) -> None:
    reward, info, velocity = _cheetah_step("metarl/HalfCheetahDir-v0", DirectionTask(direction))
    ctrl = 0.05 * float(np.sum(CHEETAH_ACTION.astype(np.float64) ** 2))
    assert reward == pytest.approx(direction * velocity - ctrl, abs=1e-6)
    assert info["reward_forward"] == pytest.approx(direction * velocity, abs=1e-12)


def _ant_step(env_id: str, task: object) -> tuple[float, dict, dict[str, float], bool]:
    """Land the ant (so contacts exist), then one step with a known action."""
    env = gym.make(env_id, task=task).unwrapped
    env.reset(seed=0)
    for _ in range(20):
        env.step(np.zeros(8, dtype=np.float32))
    torso_x_before = float(env.data.body("torso").xpos[0])
    _, reward, terminated, _, info = env.step(ANT_ACTION)
    data = env.data
    state = {
        "velocity": (float(data.body("torso").xpos[0]) - torso_x_before) / DT,
        "x": float(data.qpos[0]),
        "y": float(data.qpos[1]),
        "ctrl": 0.005 * float(np.sum(ANT_ACTION.astype(np.float64) ** 2)),
        "contact": 0.0005 * float(np.sum(np.clip(data.cfrc_ext, -1.0, 1.0) ** 2)),
        "survive": 0.05 if 0.2 <= data.qpos[2] <= 1.0 else 0.0,
    }
    return reward, info, state, terminated


def _ant_costs(state: dict[str, float]) -> float:
    return -state["ctrl"] - state["contact"] + state["survive"]


def test_ant_vel_reward_by_hand() -> None:
    reward, info, state, terminated = _ant_step("metarl/AntVel-v0", VelocityTask(2.2))
    assert state["contact"] > 0 and state["survive"] == 0.05 and not terminated
    forward = -abs(state["velocity"] - 2.2) + 1.0
    assert reward == pytest.approx(forward + _ant_costs(state), abs=1e-6)
    assert info["reward_forward"] == pytest.approx(forward, abs=1e-9)
    assert info["reward_contact"] == pytest.approx(-state["contact"], abs=1e-12)
    assert info["reward_ctrl"] == pytest.approx(-state["ctrl"], abs=1e-6)
    assert info["reward_survive"] == 0.05 and info["task"] == VelocityTask(2.2)


@pytest.mark.parametrize("direction", [-1, 1])
def test_ant_dir_reward_by_hand(direction: int) -> None:
    reward, info, state, _ = _ant_step("metarl/AntDir-v0", DirectionTask(direction))
    forward = direction * state["velocity"]
    assert reward == pytest.approx(forward + _ant_costs(state), abs=1e-6)
    assert info["reward_forward"] == pytest.approx(forward, abs=1e-9)


def test_ant_goal_reward_by_hand() -> None:
    reward, info, state, _ = _ant_step("metarl/AntGoal-v0", GoalTask(goal=(-2.0, 1.5)))
    goal_term = -(abs(state["x"] + 2.0) + abs(state["y"] - 1.5)) + 4.0
    assert reward == pytest.approx(goal_term + _ant_costs(state), abs=1e-6)
    assert info["reward_goal"] == pytest.approx(goal_term, abs=1e-12)
    assert "reward_forward" not in info


def test_ant_terminates_when_unhealthy_without_survive_bonus() -> None:
    env = gym.make("metarl/AntVel-v0").unwrapped
    env.reset(seed=0)
    qpos = env.init_qpos.copy()
    qpos[2] = 1.5  # torso above the healthy range [0.2, 1.0]
    env.set_state(qpos, np.zeros(env.model.nv))
    _, _, terminated, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert terminated and info["reward_survive"] == 0.0


# --- set_task changes the reward as specified, not the dynamics ---------------------------------
def _rollout_infos(env_id: str, task: object, steps: int = 40) -> tuple[list, np.ndarray]:
    env = gym.make(env_id)
    env.unwrapped.set_task(task)
    env.reset(seed=11)
    rng = np.random.default_rng(3)
    infos, rewards = [], []
    for _ in range(steps):
        obs, reward, terminated, _, info = env.step(
            rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        )
        infos.append((obs, info))
        rewards.append(reward)
        if terminated:
            break
    return infos, np.array(rewards)


CHANGES = [
    ("metarl/HalfCheetahVel-v0", VelocityTask(0.2), VelocityTask(1.9),
     lambda i: -abs(i["x_velocity"] - 0.2) + abs(i["x_velocity"] - 1.9)),
    ("metarl/HalfCheetahDir-v0", DirectionTask(1), DirectionTask(-1),
     lambda i: 2 * i["x_velocity"]),
    ("metarl/AntVel-v0", VelocityTask(0.5), VelocityTask(2.5),
     lambda i: -abs(i["x_velocity"] - 0.5) + abs(i["x_velocity"] - 2.5)),
    ("metarl/AntDir-v0", DirectionTask(1), DirectionTask(-1), lambda i: 2 * i["x_velocity"]),
    ("metarl/AntGoal-v0", GoalTask(goal=(1.0, -2.0)), GoalTask(goal=(-2.5, 0.5)),
     lambda i: -abs(i["x_position"] - 1.0) - abs(i["y_position"] + 2.0)
     + abs(i["x_position"] + 2.5) + abs(i["y_position"] - 0.5)),
]  # fmt: skip


@pytest.mark.parametrize(("env_id", "task_a", "task_b", "difference"), CHANGES)
def test_set_task_changes_the_reward_as_specified(env_id, task_a, task_b, difference) -> None:
    steps_a, rewards_a = _rollout_infos(env_id, task_a)
    steps_b, rewards_b = _rollout_infos(env_id, task_b)
    assert len(steps_a) == len(steps_b) > 10
    for (obs_a, _), (obs_b, _) in zip(steps_a, steps_b, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)  # the task changes the reward only
    expected = np.array([difference(info) for _, info in steps_a])
    np.testing.assert_allclose(rewards_a - rewards_b, expected, rtol=0, atol=1e-9)
    assert np.abs(expected).max() > 0.1


# --- the batched half-cheetah vector envs ------------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "tasks"),
    [
        ("metarl/HalfCheetahVel-v0", [VelocityTask(v) for v in (0.1, 0.7, 1.5, 1.9)]),
        ("metarl/HalfCheetahDir-v0", [DirectionTask(d) for d in (1, -1, -1, 1)]),
    ],
)
def test_batched_half_cheetah_equals_single_envs_bitwise(env_id: str, tasks: list) -> None:
    from metarl.rl.sampling.processes import SerialVectorEnv

    kwargs = {"max_episode_steps": 7}  # 20 steps: two time-limit ends and autoresets each
    batched = gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point", **kwargs)
    single = SerialVectorEnv([lambda: gym.make(env_id, **kwargs)] * 4)
    assert type(batched).__name__.endswith("VectorEnv") and batched.num_envs == 4
    assert batched.single_observation_space == single.single_observation_space
    assert batched.single_action_space == single.single_action_space
    for env in (batched, single):
        env.set_attr("task", tasks)
    assert batched.get_attr("task") == tuple(tasks)
    obs_b, _ = batched.reset(seed=[3, 4, 5, 6])
    obs_s, _ = single.reset(seed=[3, 4, 5, 6])
    assert obs_b.dtype == obs_s.dtype == np.float64
    np.testing.assert_array_equal(obs_b, obs_s)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(20):
        actions = rng.uniform(-1, 1, (4, 6)).astype(np.float32)
        got, want = batched.step(actions)[:4], single.step(actions)[:4]
        for x, y in zip(got, want, strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        ends += int(got[3].sum())
    assert ends == 8
    assert len({float(r) for r in got[1]}) == 4  # the tasks' rewards differ


def test_batched_half_cheetah_resets_seeds_and_rejects_bad_input() -> None:
    env = gym.make_vec(
        "metarl/HalfCheetahVel-v0", num_envs=3, vectorization_mode="vector_entry_point"
    )
    assert env.max_episode_steps == 200  # the registered horizon
    first, _ = env.reset(seed=10)
    again, _ = env.reset(seed=[10, 11, 12])  # an int seeds sub-env i with seed + i
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])
    moved = env.step(np.ones((3, 6), dtype=np.float32))[0]
    partial, _ = env.reset(seed=[10, 11, 12], options={"reset_mask": np.array([True, False, True])})
    np.testing.assert_array_equal(partial[[0, 2]], first[[0, 2]])
    np.testing.assert_array_equal(partial[1], moved[1])
    with pytest.raises(ValueError, match="actions must have shape"):
        env.step(np.zeros((2, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="2 seeds for 3 sub-envs"):
        env.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="one task per sub-env"):
        env.set_attr("task", [VelocityTask(1.0)] * 2)
    with pytest.raises(ValueError, match="velocity"):
        env.set_attr("task", VelocityTask(5.0))
    with pytest.raises(TypeError):
        env.set_attr("task", DirectionTask(1))
    with pytest.raises(AttributeError, match="only set 'task'"):
        env.set_attr("goal", 1.0)


# --- the batched ant vector envs ---------------------------------------------------------------
ANT_TASKS = {
    "metarl/AntVel-v0": [VelocityTask(v) for v in (0.2, 1.1, 2.9, 1.1)],
    "metarl/AntDir-v0": [DirectionTask(d) for d in (1, -1, 1, -1)],
    "metarl/AntGoal-v0": [GoalTask(goal=g) for g in ((2.0, -1.0), (-3.0, 0.5), (0.1, 2.7), (1, 1))],
}
HEALTHY_Z = (0.2, 1.0)


def _bang_bang(rng: np.random.Generator, num_envs: int) -> np.ndarray:
    """Full torques of random signs: the ant jumps and flips, leaving the healthy z range."""
    return np.sign(rng.uniform(-1, 1, (num_envs, 8))).astype(np.float32)


def _assert_same_ant_rollouts(batched, single, *, steps: int, seed: int) -> dict[str, int]:
    """Seeded resets, then ``steps`` bang-bang steps compared bitwise; counts the ends."""
    assert type(batched).__name__.startswith("Ant") and batched.num_envs == single.num_envs
    assert batched.metadata["autoreset_mode"] is gym.vector.AutoresetMode.NEXT_STEP
    assert batched.single_observation_space == single.single_observation_space
    assert batched.single_action_space == single.single_action_space
    seeds = [seed + i for i in range(batched.num_envs)]
    obs_b, obs_s = batched.reset(seed=seeds)[0], single.reset(seed=seeds)[0]
    assert obs_b.dtype == obs_s.dtype == np.float64
    np.testing.assert_array_equal(obs_b, obs_s)
    rng = np.random.default_rng(seed)
    counts = {"terminated": 0, "truncated": 0}
    for _ in range(steps):
        actions = _bang_bang(rng, batched.num_envs)
        got, want = batched.step(actions)[:4], single.step(actions)[:4]
        for x, y in zip(got, want, strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        assert batched.observation_space.contains(got[0])
        counts["terminated"] += int(got[2].sum())
        counts["truncated"] += int(got[3].sum())
    return counts


@pytest.mark.parametrize("env_id", list(ANT_TASKS))
def test_batched_ant_equals_single_envs_bitwise(env_id: str) -> None:
    """Per-sub-env tasks, seeded resets, healthy-z terminations, time limits (30 steps here)
    and the NEXT_STEP autoresets after both: bitwise the single envs' through all of it."""
    from metarl.rl.sampling.processes import SerialVectorEnv

    tasks, kwargs = ANT_TASKS[env_id], {"max_episode_steps": 30}
    batched = gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point", **kwargs)
    single = SerialVectorEnv([lambda: gym.make(env_id, **kwargs)] * 4)
    for env in (batched, single):
        env.set_attr("task", tasks)
    assert batched.get_attr("task") == tuple(tasks)
    counts = _assert_same_ant_rollouts(batched, single, steps=80, seed=3)
    assert counts["terminated"] >= 4 and counts["truncated"] >= 2
    rewards = batched.step(_bang_bang(np.random.default_rng(9), 4))[1]
    assert len({float(r) for r in rewards}) == 4  # the tasks' rewards differ


def test_batched_ant_terminates_outside_the_healthy_z_range_and_autoresets() -> None:
    """A step terminates exactly where the torso height (obs[0] = qpos[2]) left [0.2, 1.0];
    the step after, that sub-env is reset (its action ignored, reward 0, not ended)."""
    env = gym.make_vec("metarl/AntVel-v0", num_envs=4, vectorization_mode="vector_entry_point")
    env.reset(seed=3)
    rng, (low, high) = np.random.default_rng(3), HEALTHY_Z
    resetting = np.zeros(4, dtype=bool)
    terminations = 0
    for _ in range(60):
        obs, rewards, terminated, truncated, _ = env.step(_bang_bang(rng, 4))
        outside = (obs[:, 0] < low) | (obs[:, 0] > high)
        np.testing.assert_array_equal(terminated[~resetting], outside[~resetting])
        assert not (terminated | truncated)[resetting].any()
        assert (rewards[resetting] == 0.0).all() and not outside[resetting].any()
        terminations += int(terminated.sum())
        resetting = terminated | truncated
    assert terminations >= 3


def test_batched_ant_options_equal_single_envs_bitwise() -> None:
    """Ant-v5's knobs reach the batched env as the single env: no contact forces or with x/y
    in the observation, other clip and healthy ranges, the main body by name, no termination."""
    from metarl.rl.sampling.processes import SerialVectorEnv

    env_id = "metarl/AntDir-v0"
    variants = [
        {"include_cfrc_ext_in_observation": False, "healthy_z_range": (0.3, 0.9)},
        {
            "exclude_current_positions_from_observation": False,
            "contact_force_range": (-0.5, 2.0),
            "main_body": "torso",
            "terminate_when_unhealthy": False,
            "ctrl_cost_weight": 0.1,
            "healthy_reward": 1.0,
            "reset_noise_scale": 0.2,
            "max_episode_steps": 25,
        },
    ]
    dims = []
    for kwargs in variants:
        batched = gym.make_vec(
            env_id, num_envs=3, vectorization_mode="vector_entry_point", **kwargs
        )
        single = SerialVectorEnv([lambda kwargs=kwargs: gym.make(env_id, **kwargs)] * 3)
        counts = _assert_same_ant_rollouts(batched, single, steps=40, seed=7)
        dims.append(batched.single_observation_space.shape[0])
        assert counts["terminated" if "healthy_z_range" in kwargs else "truncated"] >= 2
        assert counts["terminated"] == 0 or "healthy_z_range" in kwargs
    assert dims == [27, 107]  # 13 + 14 without the 78 contact forces; 15 + 14 + 78


def test_batched_ant_resets_seeds_and_rejects_bad_input() -> None:
    env = gym.make_vec("metarl/AntGoal-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert env.max_episode_steps == 200  # the registered horizon
    assert env.observation_space.shape == (3, 105) and env.action_space.shape == (3, 8)
    first, _ = env.reset(seed=10)
    again, _ = env.reset(seed=[10, 11, 12])  # an int seeds sub-env i with seed + i
    np.testing.assert_array_equal(first, again)
    assert env.observation_space.contains(first) and not np.array_equal(first[0], first[1])
    moved = env.step(np.ones((3, 8), dtype=np.float32))[0]
    partial, _ = env.reset(seed=[10, 11, 12], options={"reset_mask": np.array([True, False, True])})
    np.testing.assert_array_equal(partial[[0, 2]], first[[0, 2]])
    np.testing.assert_array_equal(partial[1], moved[1])
    with pytest.raises(ValueError, match=r"actions must have shape \(3, 8\)"):
        env.step(np.zeros((3, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="one task per sub-env"):
        env.set_attr("task", [GoalTask(goal=(0.0, 0.0))] * 2)
    with pytest.raises(ValueError, match="AntGoal"):
        env.set_attr("task", [GoalTask(goal=(0.0, 0.0))] * 2 + [GoalTask(goal=(3.5, 0.0))])
    with pytest.raises(TypeError):
        env.set_attr("task", VelocityTask(1.0))
    assert env.get_attr("task") == (GoalTask(goal=(1.5, 1.5)),) * 3  # unchanged: the default
    with pytest.raises(AttributeError, match="only set 'task'"):
        env.set_attr("goal", (1.0, 1.0))
    with pytest.raises(ValueError, match="render modes"):
        gym.make_vec(
            "metarl/AntVel-v0", num_envs=2, vectorization_mode="vector_entry_point",
            render_mode="rgb_array",
        )  # fmt: skip
