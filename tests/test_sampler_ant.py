"""The sampler on the batched Ant envs: chosen through ``vector_entry_point``, and bitwise the
episodes (terminations included) of the same sampler stepping single Ant envs."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from metarl.envs.ant import AntDirVectorEnv, AntGoalVectorEnv, AntVelVectorEnv

from metarl.rl.policies import GaussianMLPPolicy
from metarl.rl.sampling.envs import make_env
from metarl.rl.sampling.local import Sampler
from metarl.rl.sampling.processes import SerialVectorEnv

BATCHED = {
    "metarl/AntVel-v0": AntVelVectorEnv,
    "metarl/AntDir-v0": AntDirVectorEnv,
    "metarl/AntGoal-v0": AntGoalVectorEnv,
}
FIELDS = (
    "observations",
    "actions",
    "rewards",
    "mask",
    "log_probs",
    "lengths",
    "terminated",
    "truncated",
    "last_observations",
)


def falling_ants(env_id: str) -> tuple[GaussianMLPPolicy, dict, list, dict]:
    """A wide policy (std e, actions clipped to the torque limits) that makes some ants flip,
    3 tasks, and a sampler's sizes: 2 episodes per task of at most 60 steps."""
    policy = GaussianMLPPolicy(obs_dim=105, act_dim=8, hidden_sizes=(16,), init_log_std=1.0)
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = make_env(env_id).unwrapped.sample_tasks(3, np.random.default_rng(1))
    return policy, params, tasks, {"env_id": env_id, "num_tasks": 3, "episodes_per_task": 2,
                                   "horizon": 60}  # fmt: skip


@pytest.mark.parametrize(
    ("env_id", "backend"),
    [
        ("metarl/AntVel-v0", "local"),
        ("metarl/AntDir-v0", "local"),
        ("metarl/AntGoal-v0", "local"),
        ("metarl/AntGoal-v0", "processes"),
    ],
)
def test_batched_ant_sampler_equals_single_envs(env_id: str, backend: str) -> None:
    """A wide policy (std e, actions clipped to the torque limits) makes some ants flip: the
    terminated episodes, their lengths and masks agree too."""
    assert gym.spec(env_id).vector_entry_point == f"metarl.envs.ant:{BATCHED[env_id].__name__}"
    policy, params, tasks, kw = falling_ants(env_id)
    batches = []
    for single in (False, True):
        with Sampler(**kw, backend=backend, num_workers=2) as sampler:
            if single:
                sampler.envs.close()
                sampler.envs = SerialVectorEnv([lambda: gym.make(env_id)] * 6)
            elif backend == "local":
                assert isinstance(sampler.envs, BATCHED[env_id])
            else:
                assert "SerialVectorEnv" not in repr(sampler.envs)
            batches.append(
                sampler.sample(policy, params, tasks, seed=5, generator=torch.Generator())
            )
    batched, single_envs = batches
    for name in FIELDS:
        assert torch.equal(getattr(batched, name), getattr(single_envs, name)), name
    assert bool(batched.terminated.any()) and bool(batched.truncated.any())
    assert int(batched.lengths.min()) < 60


class EveryStep(gym.vector.VectorWrapper):
    """A vector env without ``step_active``: the sampler steps every sub-env on every step,
    also those whose episode has ended (they autoreset and run on, unused)."""

    def set_attr(self, name: str, values: object) -> None:
        self.env.set_attr(name, values)  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["local", "processes"])
def test_ended_sub_envs_are_not_simulated_and_change_nothing(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler steps only the sub-envs whose episode is still running: the MuJoCo steps
    it simulates are exactly the batch's real steps, and the episodes are bitwise those of
    stepping every sub-env on every step."""
    env_id = "metarl/AntDir-v0"
    simulated: list[int] = []
    original = AntDirVectorEnv._simulate

    def counting(self: AntDirVectorEnv, ctrls: list, datas: list, actions: np.ndarray) -> None:
        simulated.append(len(datas))
        original(self, ctrls, datas, actions)

    monkeypatch.setattr(AntDirVectorEnv, "_simulate", counting)
    policy, params, tasks, kw = falling_ants(env_id)
    batches = []
    for every_step in (False, True):
        with Sampler(**kw, backend="local" if every_step else backend) as sampler:
            if every_step:
                sampler.envs = EveryStep(sampler.envs)
                assert not hasattr(sampler.envs, "step_active")
            simulated.clear()
            batches.append(
                sampler.sample(policy, params, tasks, seed=5, generator=torch.Generator())
            )
            if backend == "local" or every_step:
                steps = sum(simulated)
                real = int(batches[-1].lengths.sum())
                assert steps == real if not every_step else steps > real
    masked, full = batches
    for name in FIELDS:
        assert torch.equal(getattr(masked, name), getattr(full, name)), name
    assert bool(masked.terminated.any()) and int(masked.lengths.min()) < 60


def test_batched_step_active_leaves_the_other_sub_envs_alone() -> None:
    vec, whole = AntDirVectorEnv(3, max_episode_steps=5), AntDirVectorEnv(3, max_episode_steps=5)
    act = np.full((3, 8), 0.3, np.float32)
    for env in (vec, whole):
        env.reset(seed=[1, 2, 3])
        for _ in range(4):
            env.step(act)
    before = vec._qpos.copy()
    obs, rew, term, trunc, _ = vec.step_active(act, np.array([True, False, False]))
    full = whole.step(act)
    assert np.array_equal(obs[0], full[0][0]) and rew[0] == full[1][0]  # bitwise a step
    assert np.array_equal(vec._qpos[1:], before[1:])  # the others not simulated
    assert bool(trunc[0]) and not trunc[1:].any() and not term[1:].any()
    assert (rew[1:] == 0).all() and vec._steps.tolist() == [5, 4, 4]
    _, rew, _, trunc, _ = vec.step_active(act, np.array([True, True, False]))
    assert rew[0] == 0 and vec._steps.tolist() == [0, 5, 4]  # 0 autoreset, 1 stepped
    assert bool(trunc[1]) and not trunc[0] and not trunc[2]


def test_the_paper_time_step_registration_equals_the_configs_env_kwargs() -> None:
    """The committed AntVel runs name ``results/ant_vel/paper_dt.py:paperdt/AntVel-v0``; the
    Ant configs give ``metarl/AntVel-v0`` ``env.kwargs: {frame_skip: 2}``: the same episodes."""
    from pathlib import Path

    paper_dt = Path(__file__).resolve().parents[1] / "results" / "ant_vel" / "paper_dt.py"
    policy = GaussianMLPPolicy(obs_dim=105, act_dim=8, hidden_sizes=(16,), init_log_std=1.0)
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = make_env("metarl/AntVel-v0").unwrapped.sample_tasks(2, np.random.default_rng(1))
    kw = {"num_tasks": 2, "episodes_per_task": 2, "horizon": 40}
    batches = []
    for env_id, env_kwargs in [
        (f"{paper_dt}:paperdt/AntVel-v0", {}),
        ("metarl/AntVel-v0", {"frame_skip": 2}),
    ]:
        with Sampler(env_id=env_id, env_kwargs=env_kwargs, **kw) as sampler:
            assert sampler.envs.unwrapped.dt == pytest.approx(0.02)  # type: ignore[attr-defined]
            batches.append(
                sampler.sample(policy, params, tasks, seed=3, generator=torch.Generator())
            )
    for name in FIELDS:
        assert torch.equal(getattr(batches[0], name), getattr(batches[1], name)), name
