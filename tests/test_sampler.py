"""The sampler: episodes equal single-env replays, masks and ends are right, backends agree."""

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.rl.episodes import concat_tasks
from metarl.rl.policies import GaussianMLPPolicy
from metarl.rl.sampling.base import RolloutDraws
from metarl.rl.sampling.envs import make_env, resolve_env_id
from metarl.rl.sampling.local import Sampler


@dataclass(frozen=True)
class Threshold:
    value: float


class ReachEnv(gym.Env[np.ndarray, np.ndarray]):
    """x starts at 0 and moves by the action; the episode ends once x >= task.value."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self) -> None:
        self._task = Threshold(1.0)
        self.x = 0.0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Threshold]:
        return [Threshold(float(v)) for v in rng.uniform(0.5, 2.0, num_tasks)]

    def set_task(self, task: Threshold) -> None:
        self._task = task

    @property
    def task(self) -> Threshold:
        return self._task

    @task.setter
    def task(self, task: Threshold) -> None:
        self.set_task(task)

    def reset(self, *, seed: int | None = None, options: Any = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-0.01, 0.01))
        return np.array([self.x], np.float32), {}

    def step(self, action: np.ndarray):
        self.x += float(action[0])
        done = self.x >= self._task.value
        return np.array([self.x], np.float32), self.x, done, False, {}


gym.register("metarl_test/Reach-v0", entry_point=ReachEnv, max_episode_steps=6)


def _policy(obs_dim: int, act_dim: int, seed: int = 0) -> tuple[GaussianMLPPolicy, dict]:
    policy = GaussianMLPPolicy(
        obs_dim=obs_dim, act_dim=act_dim, hidden_sizes=(16,), init_log_std=-0.5
    )
    return policy, policy.init_params(torch.Generator().manual_seed(seed))


def test_navigation_episodes_equal_single_env_replays() -> None:
    policy, params = _policy(2, 2)
    rng = np.random.default_rng(0)
    with Sampler(
        env_id="metarl/Navigation2D-v0", num_tasks=3, episodes_per_task=4, horizon=100
    ) as sampler:
        tasks = make_env("metarl/Navigation2D-v0").unwrapped.sample_tasks(3, rng)
        batch = sampler.sample(
            policy, params, tasks, generator=torch.Generator().manual_seed(1), seed=5
        )
    assert batch.observations.shape == (100, 12, 2) and batch.num_tasks == 3
    assert bool((batch.truncated ^ batch.terminated).all())  # each ended exactly one way
    assert bool((batch.lengths[batch.truncated] == 100).all())
    for n in range(12):
        env = make_env("metarl/Navigation2D-v0")
        env.unwrapped.set_task(tasks[n // 4])
        obs, _ = env.reset()
        for t in range(int(batch.lengths[n])):
            np.testing.assert_array_equal(batch.observations[t, n].numpy(), obs)
            obs, rew, *_ = env.step(batch.actions[t, n].numpy())
            assert batch.rewards[t, n].item() == pytest.approx(rew, abs=1e-6)
        np.testing.assert_array_equal(batch.last_observations[n].numpy(), obs)
    recomputed = policy.log_prob(params, batch.observations, batch.actions) * batch.mask
    torch.testing.assert_close(recomputed, batch.log_probs, rtol=1e-5, atol=1e-5)


def test_same_seeds_give_identical_batches() -> None:
    policy, params = _policy(2, 2)
    with Sampler(
        env_id="metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=3, horizon=50
    ) as sampler:
        tasks = sampler.envs.sample_tasks(2, np.random.default_rng(0))  # type: ignore[attr-defined]
        a, b, c = (
            sampler.sample(
                policy, params, tasks, seed=s, generator=torch.Generator().manual_seed(g)
            )
            for s, g in ((1, 2), (1, 2), (1, 3))
        )
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.actions, c.actions)


def test_terminated_truncated_and_masks_without_lost_or_duplicated_steps() -> None:
    policy, params = _policy(1, 1)
    params = {k: torch.zeros_like(v) for k, v in params.items()}
    params["mlp.2.bias"] = torch.tensor([0.3])  # mean action 0.3 with a small spread:
    params["log_std"] = torch.tensor([-4.0])  # x grows steadily
    tasks = [Threshold(0.5), Threshold(5.0)]  # ends in ~2 steps vs never (time limit 6)
    with Sampler(
        env_id="metarl_test/Reach-v0", num_tasks=2, episodes_per_task=3, horizon=10
    ) as sampler:
        batch = sampler.sample(
            policy, params, tasks, seed=0, generator=torch.Generator().manual_seed(0)
        )
    first, second = slice(0, 3), slice(3, 6)
    assert bool(batch.terminated[first].all()) and not bool(batch.truncated[first].any())
    assert bool(batch.truncated[second].all()) and not bool(batch.terminated[second].any())
    assert (batch.lengths[second] == 6).all() and batch.horizon == 6
    for n in range(6):
        length = int(batch.lengths[n])
        assert batch.mask[:length, n].eq(1).all() and batch.mask[length:, n].eq(0).all()
        assert batch.rewards[length:, n].eq(0).all()
        # rewards are x after each move: consecutive observations differ by the action taken
        obs = torch.cat([batch.observations[:length, n, 0], batch.last_observations[n]])
        torch.testing.assert_close(obs[1:], batch.rewards[:length, n])
        torch.testing.assert_close(obs[1:] - obs[:-1], batch.actions[:length, n, 0])
        if n < 3:
            assert length == 2 and batch.last_observations[n, 0] >= 0.5 and obs[-2] < 0.5


def test_per_task_params_act_with_their_own_weights() -> None:
    policy, params = _policy(2, 2)
    other = {k: v + 0.5 for k, v in params.items()}
    stacked = {k: torch.stack([params[k], other[k]]) for k in params}
    with Sampler(
        env_id="metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=2, horizon=20
    ) as sampler:
        tasks = sampler.envs.sample_tasks(2, np.random.default_rng(0))  # type: ignore[attr-defined]
        batch = sampler.sample(
            policy,
            stacked,
            tasks,
            seed=0,
            per_task_params=True,
            generator=torch.Generator().manual_seed(0),
        )
    for k, weights in enumerate((params, other)):
        sl = slice(2 * k, 2 * k + 2)
        lp = policy.log_prob(weights, batch.observations[:, sl], batch.actions[:, sl])
        torch.testing.assert_close(lp, batch.log_probs[:, sl], rtol=1e-5, atol=1e-5)


def test_process_backend_equals_local_backend_on_mujoco() -> None:
    policy, params = _policy(17, 6)
    tasks = make_env("metarl/HalfCheetahVel-v0").unwrapped.sample_tasks(2, np.random.default_rng(0))
    batches = []
    for backend in ("local", "processes"):
        with Sampler(
            env_id="metarl/HalfCheetahVel-v0",
            num_tasks=2,
            episodes_per_task=2,
            horizon=15,
            backend=backend,
            num_workers=2,
        ) as sampler:
            batches.append(
                sampler.sample(
                    policy, params, tasks, seed=3, generator=torch.Generator().manual_seed(0)
                )
            )
    local, procs = batches
    assert torch.equal(local.observations, procs.observations)
    assert torch.equal(local.rewards, procs.rewards)
    assert not torch.equal(local.observations[0, 0], local.observations[0, 1])  # seeded resets


@pytest.mark.parametrize("backend", ["local", "processes"])
def test_batched_half_cheetah_sampler_equals_single_envs(backend: str) -> None:
    """The sampler on the batched env (shards of it on two processes) gives bitwise the
    episodes of the same sampler stepping HalfCheetahVel-v0 single envs."""
    from metarl.rl.sampling.processes import SerialVectorEnv

    env_id = "metarl/HalfCheetahVel-v0"
    policy, params = _policy(17, 6)
    tasks = make_env(env_id).unwrapped.sample_tasks(3, np.random.default_rng(1))
    kw = {"env_id": env_id, "num_tasks": 3, "episodes_per_task": 2, "horizon": 12}
    batches = []
    for single in (False, True):
        with Sampler(**kw, backend=backend, num_workers=2) as sampler:
            if single:
                sampler.envs.close()
                sampler.envs = SerialVectorEnv([lambda: gym.make(env_id)] * 6)
            else:
                assert "SerialVectorEnv" not in repr(sampler.envs)
            batches.append(
                sampler.sample(policy, params, tasks, seed=5, generator=torch.Generator())
            )
    batched, single_envs = batches
    for name in ("observations", "actions", "rewards", "mask", "log_probs", "last_observations"):
        assert torch.equal(getattr(batched, name), getattr(single_envs, name)), name


def test_env_kwargs_reach_every_kind_of_vector_env() -> None:
    """``env_kwargs`` (config ``env.kwargs``) go to the batched env, to its shards on worker
    processes and to single envs alike: frame_skip 2 gives the same episodes in all three,
    and other episodes than v5's frame_skip 5."""
    from metarl.rl.sampling.processes import SerialVectorEnv

    env_id, kwargs = "metarl/HalfCheetahVel-v0", {"frame_skip": 2}
    assert make_env(env_id, env_kwargs=kwargs).unwrapped.dt == pytest.approx(0.02)
    policy, params = _policy(17, 6)
    tasks = make_env(env_id).unwrapped.sample_tasks(2, np.random.default_rng(1))
    kw = {"env_id": env_id, "num_tasks": 2, "episodes_per_task": 2, "horizon": 10}
    batches = {}
    for name, backend, given in [
        ("batched", "local", kwargs),
        ("shards", "processes", kwargs),
        ("single", "local", kwargs),
        ("v5", "local", {}),
    ]:
        with Sampler(**kw, env_kwargs=given, backend=backend, num_workers=2) as sampler:
            if name == "single":
                sampler.envs.close()
                sampler.envs = SerialVectorEnv([lambda: gym.make(env_id, frame_skip=2)] * 4)
            batches[name] = sampler.sample(
                policy, params, tasks, seed=5, generator=torch.Generator().manual_seed(0)
            )
    for name in ("shards", "single"):
        assert torch.equal(batches[name].observations, batches["batched"].observations), name
        assert torch.equal(batches[name].rewards, batches["batched"].rewards), name
    assert not torch.equal(batches["v5"].observations, batches["batched"].observations)


def test_reserved_env_kwargs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="'max_episode_steps' cannot be set here: the episode"):
        make_env("metarl/Navigation2D-v0", env_kwargs={"max_episode_steps": 5})
    with pytest.raises(ValueError, match="'tasks' cannot be set here: tasks come from"):
        Sampler(
            env_id="metarl/Navigation2D-v0",
            env_kwargs={"tasks": []},
            num_tasks=1,
            episodes_per_task=1,
            horizon=5,
        )


def test_unknown_env_ids_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown env id 'metarl/Nope-v0'; registered task envs"):
        resolve_env_id("metarl/Nope-v0")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        resolve_env_id("no_such_module:Thing-v0")
    assert resolve_env_id("metarl.envs:metarl/Navigation2D-v0") == "metarl/Navigation2D-v0"


def test_serial_vector_env_autoresets_on_the_next_step() -> None:
    from metarl.rl.sampling.processes import SerialVectorEnv

    vec = SerialVectorEnv([lambda: gym.make("metarl_test/Reach-v0")] * 2)
    vec.set_attr("task", [Threshold(0.5), Threshold(5.0)])
    obs, _ = vec.reset(seed=[1, 2])
    assert obs.shape == (2, 1)
    obs, rew, term, trunc, _ = vec.step(np.array([[0.6], [0.6]], np.float32))
    assert term.tolist() == [True, False] and rew[0] == pytest.approx(obs[0, 0])
    assert not trunc.any()
    obs, rew, term, trunc, _ = vec.step(np.array([[0.6], [0.6]], np.float32))
    # sub-env 0 was reset (action ignored, reward 0); sub-env 1 stepped on
    assert abs(obs[0, 0]) <= 0.01 and rew[0] == 0.0 and not term[0] and not trunc[0]
    assert obs[1, 0] == pytest.approx(1.2, abs=0.02)
    assert vec.get_attr("task") == (Threshold(0.5), Threshold(5.0))
    vec.close()


def test_serial_vector_env_steps_only_the_active_sub_envs() -> None:
    from metarl.rl.sampling.processes import SerialVectorEnv

    vec = SerialVectorEnv([lambda: gym.make("metarl_test/Reach-v0")] * 3)
    vec.set_attr("task", [Threshold(0.5), Threshold(5.0), Threshold(5.0)])
    vec.reset(seed=[1, 2, 3])
    act = np.full((3, 1), 0.6, np.float32)
    obs, _, term, _, _ = vec.step(act)
    assert term.tolist() == [True, False, False]
    # sub-env 0 (ended) and 2 left alone: no autoreset, no step, reward 0, no end flags
    obs2, rew, term, trunc, _ = vec.step_active(act, np.array([False, True, False]))
    assert obs2[0, 0] == obs[0, 0] and obs2[2, 0] == obs[2, 0]
    assert obs2[1, 0] == pytest.approx(1.2, abs=0.02)
    assert rew[0] == rew[2] == 0.0 and not term.any() and not trunc.any()
    # sub-env 0 still owes its autoreset, done on its next active step
    obs3, rew, term, _, _ = vec.step(act)
    assert abs(obs3[0, 0]) <= 0.01 and rew[0] == 0.0 and not term[0]
    assert obs3[2, 0] == pytest.approx(obs[2, 0] + 0.6, abs=0.02)
    with pytest.raises(ValueError, match="active must have shape"):
        vec.step_active(act, np.array([True, False]))
    vec.close()


@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per-task"])
@pytest.mark.parametrize("sensitive", [False, True], ids=["mlp", "shape-sensitive"])
@pytest.mark.parametrize(
    ("env_id", "split"),
    [("metarl/Navigation2D-v0", (2, 1, 2)), ("metarl/HalfCheetahVel-v0", (1, 2))],
)
def test_any_split_of_the_tasks_gives_the_same_episodes(
    env_id: str, split: tuple, sensitive: bool, per_task: bool
) -> None:
    """What the Ray backend relies on: slices of the tasks rolled out apart (each with its
    slice of the draws and its place in the meta-batch, here 1-task slices of 2 episodes too)
    and joined equal one rollout, bitwise. With a policy whose outputs depend on the shape of
    the forward call (as a BLAS's rounding may on another CPU) too: every slice acts on the
    meta-batch's shape, so that changes nothing."""
    from ray_envs import ShapeSensitivePolicy

    num_tasks, episodes, horizon = sum(split), 2, 40
    env = make_env(env_id)
    cls = ShapeSensitivePolicy if sensitive else GaussianMLPPolicy
    policy = cls(
        obs_dim=env.observation_space.shape[0],  # type: ignore[index]
        act_dim=env.action_space.shape[0],  # type: ignore[index]
        hidden_sizes=(16,),
    )
    params = policy.init_params(torch.Generator().manual_seed(0))
    if per_task:
        gen = torch.Generator().manual_seed(3)
        params = {
            k: v + 0.1 * torch.randn((num_tasks, *v.shape), generator=gen)
            for k, v in params.items()
        }
    tasks = env.unwrapped.sample_tasks(num_tasks, np.random.default_rng(0))  # type: ignore[attr-defined]
    draws = RolloutDraws.draw(
        policy, num_tasks * episodes, horizon, torch.Generator().manual_seed(1), 2
    )
    kw = {"env_id": env_id, "episodes_per_task": episodes, "horizon": horizon}
    with Sampler(num_tasks=num_tasks, **kw) as whole:
        expected = whole.rollout(policy, params, tasks, draws, per_task_params=per_task)
    parts, a = [], 0
    for k in split:
        with Sampler(num_tasks=k, task_offset=a, meta_batch_tasks=num_tasks, **kw) as s:
            sl = draws.slice(a * episodes, (a + k) * episodes)
            w = {n: v[a : a + k] for n, v in params.items()} if per_task else params
            parts.append(s.rollout(policy, w, tasks[a : a + k], sl, per_task_params=per_task))
        a += k
    joined = concat_tasks(parts)
    for name in ("observations", "actions", "rewards", "mask", "log_probs", "lengths"):
        assert torch.equal(getattr(joined, name), getattr(expected, name)), name
    assert joined.num_tasks == num_tasks


def test_a_slice_must_lie_inside_its_meta_batch() -> None:
    with pytest.raises(ValueError, match=r"tasks 2\.\.3 are not inside a meta-batch of 3"):
        Sampler(
            env_id="metarl/Navigation2D-v0",
            num_tasks=2,
            episodes_per_task=1,
            horizon=5,
            task_offset=2,
            meta_batch_tasks=3,
        )


def test_ray_backend_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from metarl.config import load_config
    from metarl.errors import SamplerError
    from metarl.rl.sampling import make_sampler

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    cfg = load_config(None, ["kind=rl", "sampler.backend=ray"])
    with pytest.raises(SamplerError, match=r"needs Ray.*pip install -e '\.\[ray\]'"):
        make_sampler(
            cfg.sampler,
            env_id=cfg.env.id,
            num_tasks=cfg.meta_batch_size,
            episodes_per_task=cfg.episodes_per_task,
            horizon=cfg.env.horizon,
        )


def test_more_ray_workers_than_tasks_is_a_config_error(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from metarl.cli import main

    args = ["--set", "sampler.backend=ray", "--set", "sampler.num_workers=30"]
    assert main(["train", "--out", str(tmp_path / "run"), *args]) == 2
    assert "'sampler.num_workers': 30 Ray workers for 20 tasks" in capsys.readouterr().err
