"""Test batches of a fixed number of env steps (``eval.batch: steps``): the episodes kept are
those rllab's vectorized sampler keeps, checked against a step-by-step replay of its loop."""

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.cli import main
from metarl.config import load_config
from metarl.rl.episodes import EpisodeBatch
from metarl.rl.evaluation import adaptation_returns
from metarl.rl.learners import make_rl_learner
from metarl.rl.policies import GaussianMLPPolicy
from metarl.rl.sampling.local import Sampler
from metarl.rl.sampling.step_budget import (
    kept_episodes,
    sample_shared_budget,
    sample_step_budget,
)
from metarl.rngs import Rngs


def rllab_loop(lengths: np.ndarray, budget: int) -> np.ndarray:
    """rllab's ``VectorizedSampler.obtain_samples`` loop, env step by env step: sub-env ``s``
    runs the episodes ``lengths[:, s]`` back to back; after each env step the episodes that
    ended are added, until they hold ``budget`` steps. Returns the kept mask."""
    rounds, envs = lengths.shape
    kept = np.zeros_like(lengths, dtype=bool)
    episode, step_in_episode, n_samples = [0] * envs, [0] * envs, 0
    while n_samples < budget:
        for s in range(envs):
            step_in_episode[s] += 1
            if step_in_episode[s] == lengths[episode[s], s]:
                kept[episode[s], s] = True
                n_samples += lengths[episode[s], s]
                episode[s], step_in_episode[s] = episode[s] + 1, 0
                assert episode[s] < rounds, "the replay ran out of episodes"
    return kept


def _random_lengths(rng: np.random.Generator, rounds: int, envs: int, horizon: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:  # no episode ends early
        return np.full((rounds, envs), horizon)
    if kind == 1:
        return rng.integers(1, horizon + 1, (rounds, envs))
    if kind == 2:  # mostly short, some full
        return np.where(
            rng.random((rounds, envs)) < 0.7,
            rng.integers(1, min(4, horizon + 1), (rounds, envs)),
            horizon,
        )
    return np.where(rng.random((rounds, envs)) < 0.2, 1, horizon)


@pytest.mark.parametrize("case", range(60))
def test_kept_episodes_are_rllabs_and_decided_once_enough_rounds_are_given(case: int) -> None:
    rng = np.random.default_rng(case)
    envs, horizon = int(rng.integers(1, 9)), int(rng.integers(1, 25))
    lengths = _random_lengths(rng, 3 * horizon + 2, envs, horizon)
    budget = envs * horizon
    expected = rllab_loop(lengths, budget)
    decided = [
        r for r in range(1, len(lengths) + 1) if kept_episodes(lengths[:r], budget) is not None
    ]
    assert decided, "never decided"
    first = decided[0]
    assert first <= 2 * horizon - 1  # the bound in sample_step_budget's docstring
    assert decided == list(range(first, len(lengths) + 1))  # once decided, stays decided
    for r in (first, first + 1, len(lengths)):
        kept = kept_episodes(lengths[:r], budget)
        assert kept is not None
        np.testing.assert_array_equal(kept, expected[:r])
        assert not expected[r:].any()
    # the kept steps meet the budget, overshooting by at most the episodes that ended at the
    # stopping env step (one per sub-env)
    total = int(lengths[expected].sum())
    assert budget <= total < budget + envs * horizon


def test_kept_episodes_rejects_bad_lengths() -> None:
    for bad in (np.zeros((2, 3), int), np.ones(4, int), np.ones((0, 2), int)):
        with pytest.raises(ValueError, match="kept_episodes"):
            kept_episodes(bad, 4)


@dataclass(frozen=True)
class StopChance:
    p: float


class CoinEnv(gym.Env[np.ndarray, np.ndarray]):
    """Each step costs 1 and ends the episode with probability ``task.p`` (the env's own RNG):
    episodes of every length, the short ones the better."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self) -> None:
        self._task, self.t = StopChance(0.1), 0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[StopChance]:
        return [StopChance(float(p)) for p in rng.uniform(0.0, 0.3, num_tasks)]

    def set_task(self, task: StopChance) -> None:
        self._task = task

    @property
    def task(self) -> StopChance:
        return self._task

    @task.setter
    def task(self, task: StopChance) -> None:
        self.set_task(task)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> Any:
        self.t += 1
        done = bool(self.np_random.random() < self._task.p)
        return np.array([self.t], np.float32), -1.0 - 0.1 * float(action[0]), done, False, {}


gym.register("metarl_test/Coin-v0", entry_point=CoinEnv, max_episode_steps=12)


def _policy() -> tuple[GaussianMLPPolicy, dict[str, torch.Tensor]]:
    policy = GaussianMLPPolicy(obs_dim=1, act_dim=1, hidden_sizes=(8,), init_log_std=-0.5)
    return policy, policy.init_params(torch.Generator().manual_seed(0))


def _rounds_by_hand(sampler: Sampler, tasks: list[StopChance], n: int) -> list[Any]:
    """``n`` sampler calls as the step-budget functions make them with generator seed 3 and
    seed 9: round 0 with the seed itself, then seeds derived from (9, r)."""
    policy, params = _policy()
    generator = torch.Generator().manual_seed(3)
    rounds = [sampler.sample(policy, params, tasks, generator=generator, seed=9)]
    while len(rounds) < n:
        seed = int(np.random.SeedSequence([9, len(rounds)]).generate_state(1)[0])
        rounds.append(sampler.sample(policy, params, tasks, generator=generator, seed=seed))
    return rounds


def test_a_task_batch_is_the_rllab_selection_of_the_rounds_episodes() -> None:
    policy, params = _policy()
    envs, horizon = 5, 12
    with Sampler(
        env_id="metarl_test/Coin-v0", num_tasks=4, episodes_per_task=envs, horizon=horizon
    ) as sampler:
        tasks = [StopChance(p) for p in (0.0, 0.05, 0.2, 0.6)]
        batches = sample_step_budget(
            sampler, policy, params, tasks, generator=torch.Generator().manual_seed(3), seed=9
        )
        rounds = _rounds_by_hand(sampler, tasks, 4 * horizon)
    for k, batch in enumerate(batches):
        lengths = np.stack([r.lengths.reshape(4, envs)[k].numpy() for r in rounds])
        kept = rllab_loop(lengths, envs * horizon)
        np.testing.assert_array_equal(batch.lengths.numpy(), lengths[kept])
        expected = [r.rewards[:, k * envs + s] for r in rounds for s in range(envs)]
        columns = [x for x, keep in zip(expected, kept.ravel(), strict=True) if keep]
        for n, column in enumerate(columns):
            assert torch.equal(batch.rewards[: len(column), n], column)
        assert batch.num_tasks == 1 and batch.episodes_per_task == int(kept.sum()) >= envs
    counts = [b.episodes_per_task for b in batches]
    assert counts[0] == envs and counts[3] > 4 * envs  # p = 0: the call itself; p = 0.6: many


@pytest.mark.parametrize("shared", [False, True])
def test_without_early_ends_the_batch_is_the_sampler_call_itself(shared: bool) -> None:
    """Both the per-task budget (test) and the shared one (training)."""
    policy, params = _policy()
    with Sampler(
        env_id="metarl_test/Coin-v0", num_tasks=3, episodes_per_task=4, horizon=12
    ) as sampler:
        tasks = [StopChance(0.0)] * 3
        sample = sample_shared_budget if shared else sample_step_budget
        out = sample(
            sampler, policy, params, tasks, generator=torch.Generator().manual_seed(1), seed=2
        )
        call = sampler.sample(
            policy, params, tasks, generator=torch.Generator().manual_seed(1), seed=2
        )
    batches = [out.task(k) for k in range(3)] if isinstance(out, EpisodeBatch) else out
    for k, batch in enumerate(batches):
        expected = call.task(k)
        for name in ("observations", "actions", "rewards", "mask", "lengths", "log_probs"):
            assert torch.equal(getattr(batch, name), getattr(expected, name)), name


def _coin_config(batch: str, *extra: str) -> Any:
    return load_config(
        None,
        [
            "kind=rl",
            "env.id=metarl_test/Coin-v0",
            "env.horizon=12",
            "policy.hidden_sizes=[8]",
            "eval.num_tasks=5",
            "eval.episodes_per_task=4",
            "eval.max_steps=2",
            f"eval.batch={batch}",
            *extra,
        ],
    )


def test_steps_batches_give_the_episodes_curve_when_no_episode_ends_early() -> None:
    """With p = 0 both kinds of batch hold the same episodes, and every step adapts task by
    task: the same curve, bit for bit."""
    curves = {}
    for batch in ("episodes", "steps"):
        cfg = _coin_config(batch)
        params = make_rl_learner(cfg, Rngs.from_seed(0)).weights()
        tasks = [StopChance(0.0)] * 5
        with Sampler(env_id=cfg.env.id, num_tasks=5, episodes_per_task=4, horizon=12) as s:
            curves[batch] = adaptation_returns(cfg, params, tasks, s, cfg.eval, seed=4)
    assert curves["steps"].returns.shape == (3, 5)
    np.testing.assert_array_equal(curves["steps"].returns, curves["episodes"].returns)
    np.testing.assert_array_equal(curves["steps"].episodes, np.full((3, 5), 4))
    np.testing.assert_array_equal(curves["episodes"].episodes, np.full((3, 5), 4))


def test_steps_batches_favour_short_episodes_when_episodes_end_early() -> None:
    """Returns are minus the length (about): the steps batch, which drops the running (often
    long) episodes, scores higher than one episode per sub-env on the same policy."""
    cfg = _coin_config("steps", "eval.max_steps=0")
    params = make_rl_learner(cfg, Rngs.from_seed(0)).weights()
    tasks = [StopChance(0.15)] * 5
    means, counts = {}, {}
    for batch in ("episodes", "steps"):
        with Sampler(env_id=cfg.env.id, num_tasks=5, episodes_per_task=40, horizon=12) as s:
            eval_cfg = replace(cfg.eval, batch=batch, episodes_per_task=40)
            curve = adaptation_returns(cfg, params, tasks, s, eval_cfg, seed=0)
            means[batch] = curve.returns.mean()
            counts[batch] = curve.episodes.mean()
    # expected length of an episode: (1 - 0.85^12) / 0.15 = 5.8 steps
    assert means["episodes"] == pytest.approx(-5.8, abs=0.4)
    assert means["steps"] > means["episodes"] + 0.4
    # 40 sub-envs x 12 steps over episodes of ~5.8: more than twice as many episodes
    assert counts["episodes"] == 40 and counts["steps"] > 80


def test_evaluate_batch_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "nav"
    tiny = ["--set", "policy.hidden_sizes=[8]", "--set", "env.horizon=15", "--no-progress"]
    args = ["--set", "meta_batch_size=2", "--set", "episodes_per_task=2", "--set", "iterations=1"]
    assert main(["train", "--out", str(run), "--set", "kind=rl", *args, *tiny]) == 0
    ev = ["evaluate", str(run), "--num-tasks", "3", "--episodes", "2", "--steps", "1"]
    with caplog.at_level(logging.INFO, logger="metarl"):
        assert main([*ev, "--batch", "steps"]) == 0
    assert "episodes per task in batches of 30 env steps" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        main([*ev, "--batch", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    sine = tmp_path / "sine"
    sine_args = ["--set", "iterations=1", "--set", "meta_batch_size=2", "--no-progress"]
    assert main(["train", "--out", str(sine), "--set", "kind=sinusoid", *sine_args]) == 0
    assert main(["evaluate", str(sine), "--batch", "steps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "metarl evaluate: error: --batch does not apply to 'sinusoid' runs"


def test_worker_processes_give_the_same_steps_batches() -> None:
    """Navigation goals at the start end many episodes within a step or two: several rounds,
    a different count per task, and the same batches when worker processes step the envs."""
    from metarl.envs.tasks import NavigationTask

    policy = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(8,), init_log_std=-2.0)
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = [NavigationTask(goal=(0.0, 0.0)), NavigationTask(goal=(0.02, 0.0))]
    out = {}
    for backend in ("local", "processes"):
        with Sampler(
            env_id="metarl/Navigation2D-v0", num_tasks=2, episodes_per_task=3, horizon=10,
            backend=backend, num_workers=2, normalize_actions=True,
        ) as sampler:  # fmt: skip
            out[backend] = sample_step_budget(
                sampler, policy, params, tasks, generator=torch.Generator().manual_seed(0), seed=1
            )
    counts = [b.episodes_per_task for b in out["local"]]
    assert counts[0] > 3 and counts[0] != counts[1]
    for local, procs in zip(out["local"], out["processes"], strict=True):
        assert torch.equal(local.lengths, procs.lengths)
        assert torch.equal(local.observations, procs.observations)


def test_one_step_episodes_take_horizon_rounds_and_fill_the_budget_exactly() -> None:
    """Every episode ends after one step: each sub-env ends one per env step, so the budget of
    envs x horizon steps is met at step ``horizon``, after ``horizon`` rounds (the bound in
    the docstring is 2 x horizon - 1)."""
    policy, params = _policy()
    calls = 0
    with Sampler(
        env_id="metarl_test/Coin-v0", num_tasks=2, episodes_per_task=5, horizon=12
    ) as sampler:
        sample = sampler.sample

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return sample(*args, **kwargs)

        sampler.sample = counted  # type: ignore[method-assign]
        batches = sample_step_budget(
            sampler, policy, params, [StopChance(1.0)] * 2,
            generator=torch.Generator().manual_seed(0), seed=0,
        )  # fmt: skip
    assert calls == 12
    for batch in batches:
        assert batch.episodes_per_task == 5 * 12 and bool((batch.lengths == 1).all())


# The paper's meta-training batch (``batch: steps``): one sub-env per task, one shared budget.


def test_the_shared_budget_batch_is_the_rllab_selection_of_each_tasks_stream() -> None:
    policy, params = _policy()
    envs, horizon = 5, 12
    tasks = [StopChance(p) for p in (0.0, 0.05, 0.2, 0.6)]
    with Sampler(
        env_id="metarl_test/Coin-v0", num_tasks=4, episodes_per_task=envs, horizon=horizon
    ) as sampler:
        batch = sample_shared_budget(
            sampler, policy, params, tasks, generator=torch.Generator().manual_seed(3), seed=9
        )
        rounds = _rounds_by_hand(sampler, tasks, 2 * horizon)
    # task k's single sub-env runs round 0's episodes of the task, then round 1's, ...
    streams = np.concatenate([r.lengths.reshape(4, envs).numpy() for r in rounds], axis=1).T
    kept = rllab_loop(streams, 4 * envs * horizon)
    counts = kept.sum(0)
    assert batch.num_tasks == 4 and batch.episodes_per_task == counts.max()
    np.testing.assert_array_equal(batch.episode_counts().numpy(), counts)
    for k in range(4):
        stream = [(r.lengths[k * envs + s], r.rewards[:, k * envs + s]) for r in rounds
                  for s in range(envs)]  # fmt: skip
        mine = batch.task(k)
        chosen = [e for e, keep in zip(stream, kept[:, k], strict=True) if keep]
        for n, (length, rewards) in enumerate(chosen):
            assert int(mine.lengths[n]) == int(length)
            assert torch.equal(mine.rewards[:, n], rewards[: mine.horizon])
        assert (mine.lengths[counts[k] :] == 0).all() and (mine.mask[:, counts[k] :] == 0).all()
    # lockstep sub-envs: every task ran about the same number of steps, within one episode
    steps = [int(streams[kept[:, k], k].sum()) for k in range(4)]
    assert max(steps) - min(steps) < horizon
    assert counts[0] == envs and counts[3] > 4 * envs  # p = 0: its 5 full episodes; p = 0.6: many
    assert batch.mean_return() == pytest.approx(float(torch.cat(
        [r.returns.reshape(4, envs) for r in rounds], dim=1).T.numpy()[kept].mean()))  # fmt: skip


class NeverStopEnv(CoinEnv):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[StopChance]:
        return [StopChance(0.0) for _ in range(num_tasks)]


gym.register("metarl_test/NeverStop-v0", entry_point=NeverStopEnv, max_episode_steps=12)


def _meta_config(env_id: str, batch: str, method: str = "maml") -> Any:
    return load_config(
        None,
        [
            "kind=rl",
            f"method={method}",
            f"env.id={env_id}",
            "env.horizon=12",
            "policy.hidden_sizes=[8]",
            "meta_batch_size=4",
            "episodes_per_task=3",
            f"batch={batch}",
        ],
    )


@pytest.mark.parametrize("method", ["maml", "pretrained"])
def test_steps_training_is_episodes_training_when_no_episode_ends_early(method: str) -> None:
    weights = {}
    for batch in ("episodes", "steps"):
        rngs = Rngs.from_seed(0)
        learner = make_rl_learner(_meta_config("metarl_test/NeverStop-v0", batch, method), rngs)
        for _ in range(2):
            learner.step(rngs)
        weights[batch] = learner.weights()
        learner.close()
    for name, w in weights["episodes"].items():
        assert torch.equal(w, weights["steps"][name]), name


def test_steps_training_runs_on_padded_meta_batches() -> None:
    """Coin episodes end early at a task's own rate: the meta-batches hold a different number
    of episodes per task (padded with empty columns), and a meta-iteration trains on them."""
    rngs = Rngs.from_seed(0)
    learner = make_rl_learner(_meta_config("metarl_test/Coin-v0", "steps"), rngs)
    before = learner.weights()
    batch, _, _ = learner.meta_batch(Rngs.from_seed(1))  # type: ignore[attr-defined]
    counts = batch.train.episode_counts()
    assert (counts >= 3).all() and len(set(counts.tolist())) > 1
    assert (batch.train.lengths == 0).any()  # empty columns pad the tasks with fewer episodes
    stats = learner.step(rngs)
    assert stats["train_episodes"] > 3 and stats["valid_episodes"] > 3
    assert np.isfinite(stats["pre_adapt_return"]) and np.isfinite(stats["post_adapt_return"])
    changed = [not torch.equal(w, before[n]) for n, w in learner.weights().items()]
    assert all(changed)
    learner.close()


def _coin_tasks_alone() -> tuple[list[Any], Any]:
    """Three one-task batches of 2, 5 and 3 Coin episodes, and them padded to one batch."""
    from metarl.rl.episodes import pad_tasks

    policy, params = _policy()
    parts = []
    for k, (p, e) in enumerate([(0.3, 2), (0.1, 5), (0.5, 3)]):
        with Sampler(
            env_id="metarl_test/Coin-v0", num_tasks=1, episodes_per_task=e, horizon=12
        ) as sampler:
            parts.append(
                sampler.sample(
                    policy, params, [StopChance(p)], generator=torch.Generator().manual_seed(k),
                    seed=k,
                )
            )  # fmt: skip
    return parts, pad_tasks(parts)


def test_empty_columns_change_no_estimate_of_a_task() -> None:
    """Advantages (linear baseline, per-task normalization), the inner loss and the return
    of each task are the same padded with empty columns as alone. Tolerance: the padded
    sums add exact zeros in another order (float64 baseline solve, float32 elsewhere)."""
    from metarl.rl.losses import compute_advantages, vpg_loss

    parts, padded = _coin_tasks_alone()
    assert padded.episodes_per_task == 5
    np.testing.assert_array_equal(padded.episode_counts().numpy(), [2, 5, 3])
    policy, params = _policy()
    kw = {"gamma": 0.99, "gae_lambda": 1.0, "normalize": True, "bootstrap_truncated": True}
    adv = compute_advantages(padded, **kw)
    for k, part in enumerate(parts):
        alone = compute_advantages(part, **kw)
        mine = adv[:, k * 5 : k * 5 + part.episodes_per_task][: part.horizon]
        torch.testing.assert_close(mine, alone, atol=1e-5, rtol=1e-5)
        assert (adv[:, k * 5 + part.episodes_per_task : (k + 1) * 5] == 0).all()
        loss_padded = vpg_loss(policy, params, padded.task(k), adv[:, k * 5 : (k + 1) * 5])
        loss_alone = vpg_loss(policy, params, part, alone)
        torch.testing.assert_close(loss_padded, loss_alone, atol=1e-6, rtol=1e-5)
    real = torch.cat([p.returns for p in parts])
    assert padded.mean_return() == pytest.approx(float(real.double().mean()))
    assert float(padded.returns.mean()) != pytest.approx(padded.mean_return())


def test_a_task_of_empty_columns_only_is_rejected() -> None:
    from dataclasses import replace as dc_replace

    _, padded = _coin_tasks_alone()
    lengths = padded.lengths.clone()
    lengths[:5] = 0
    with pytest.raises(ValueError, match="every task must hold an episode of length >= 1"):
        dc_replace(padded, lengths=lengths, mask=padded.mask * (lengths > 0))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T="):
        dc_replace(padded, lengths=padded.lengths - 13)


def test_a_run_saved_before_the_batch_key_resumes_with_the_episodes_it_was_trained_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run directory whose config.yaml and checkpoint lack ``batch`` (saved by a version
    before the key) continues with ``episodes`` whatever the default; the same run with the
    key stated resumes to the same weights."""
    import yaml

    from metarl.trainer import load_checkpoint

    def train(out: Path, *more: str) -> int:
        args = ["train", "--out", str(out), "--no-progress", "--set", "kind=rl"]
        args += ["--set", "env.id=metarl_test/Coin-v0", "--set", "env.horizon=12"]
        args += ["--set", "policy.hidden_sizes=[8]", "--set", "meta_batch_size=2"]
        args += ["--set", "episodes_per_task=2", "--set", "batch=episodes"]
        return main([*args, *more])

    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        assert train(run, "--set", "iterations=1") == 0
    # make ``old`` look saved before the key: drop it from its config.yaml and checkpoint
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    del cfg["batch"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    payload = torch.load(old / "checkpoint.pt", weights_only=False)
    del payload["config"]["batch"]
    torch.save(payload, old / "checkpoint.pt")
    assert load_checkpoint(old).config.batch == "episodes"
    assert main(["config", "show", str(old)]) == 0
    assert "batch: episodes" in capsys.readouterr().out
    resume = ["--resume", "--set", "iterations=2"]
    assert main(["train", "--out", str(old), "--no-progress", *resume]) == 0
    assert main(["train", "--out", str(new), "--no-progress", *resume]) == 0
    for name, w in load_checkpoint(old).learner["params"].items():
        assert torch.equal(w, load_checkpoint(new).learner["params"][name]), name
