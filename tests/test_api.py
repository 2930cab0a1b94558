"""The Python API (metarl.train / evaluate / load_run / load_policy): the CLI's results as
objects, a trained policy that acts and adapts to a task."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import metarl
from metarl.cli import main
from metarl.config import ConfigError, load_config

TINY = [
    "meta_batch_size=3",
    "episodes_per_task=4",
    "policy.hidden_sizes=[16]",
    "env.horizon=20",
    "iterations=3",
    "eval.num_tasks=4",
    "eval.episodes_per_task=6",
    "eval.max_steps=2",
    "trpo.hvp=gauss_newton",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> metarl.Run:
    return metarl.train(out=tmp_path_factory.mktemp("api") / "nav", overrides=TINY)


def test_train_returns_the_run_the_cli_would_have_made(run: metarl.Run, tmp_path: Path) -> None:
    assert run.iteration == 3 and run.config.kind == "rl" and run.config.iterations == 3
    assert (run.path / "checkpoint.pt").is_file() and (run.path / "progress.csv").is_file()
    cli_dir = tmp_path / "cli"
    assert main(["train", "--out", str(cli_dir), "--quiet", *[f"--set={o}" for o in TINY]]) == 0
    ours = torch.load(run.path / "checkpoint.pt", weights_only=True)["learner"]["params"]
    theirs = torch.load(cli_dir / "checkpoint.pt", weights_only=True)["learner"]["params"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # same seed, same numbers


def test_train_takes_a_config_object_and_refuses_a_used_directory(
    run: metarl.Run, tmp_path: Path
) -> None:
    config = load_config(None, TINY)
    again = metarl.train(config, out=tmp_path / "obj", overrides=["iterations=1"])
    assert again.iteration == 1 and again.config == load_config(None, [*TINY, "iterations=1"])
    with pytest.raises(Exception, match=r"not empty|already holds"):
        metarl.train(out=run.path, overrides=TINY)
    with pytest.raises(ConfigError, match=r"inner\.lr"):
        metarl.train(out=tmp_path / "bad", overrides=["inner.lr=-1"])


def test_evaluate_gives_the_cli_rows_and_writes_only_where_asked(
    run: metarl.Run, tmp_path: Path
) -> None:
    result = metarl.evaluate(run, out=tmp_path / "eval")
    assert [r["step"] for r in result.rows] == [0, 1, 2]
    assert result.metric == "return" and all(r["num_tasks"] == 4 for r in result.rows)
    assert not (run.path / "adaptation.csv").exists()
    assert main(["evaluate", str(run.path)]) == 0
    with (run.path / "adaptation.csv").open() as f:
        cli_rows = list(csv.DictReader(f))
    with (tmp_path / "eval" / "adaptation.csv").open() as f:
        api_rows = list(csv.DictReader(f))
    assert api_rows == cli_rows
    assert (tmp_path / "eval" / "adaptation.png").is_file()
    fewer = metarl.evaluate(str(run.path), steps=1, num_tasks=3)
    assert [r["step"] for r in fewer.rows] == [0, 1] and fewer.rows[0]["num_tasks"] == 3


def test_a_loaded_policy_acts_in_the_env_it_was_trained_in(run: metarl.Run) -> None:
    policy = metarl.load_policy(run)
    env = policy.make_env(policy.sample_tasks(1, seed=3)[0])
    assert env.action_space.high.tolist() == [1.0, 1.0]  # normalized, as in training
    obs, _ = env.reset(seed=0)
    mean = policy.act(obs, deterministic=True)
    assert mean.shape == (2,) and np.array_equal(mean, policy.act(obs, deterministic=True))
    draws = [policy.act(obs, seed=s) for s in (1, 1, 2)]
    assert np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], draws[2])
    batch = policy.act(np.stack([obs, obs + 0.1]), deterministic=True)
    assert batch.shape == (2, 2) and np.allclose(batch[0], mean, atol=1e-6)
    env.step(mean)
    with pytest.raises(ConfigError, match="not an RL"):
        metarl.load_policy(_sinusoid_run(run.path.parent))


def test_adapting_to_a_task_raises_its_return_and_leaves_the_policy_alone(
    tmp_path: Path,
) -> None:
    # plain policy-gradient steps from the initial weights (method random): the steps alone
    # must move the return up on one fixed task
    run = metarl.train(
        out=tmp_path / "random",
        overrides=[*TINY, "method=random", "iterations=1", "env.horizon=30"],
    )
    policy = metarl.load_policy(run)
    task = policy.sample_tasks(1, seed=7)[0]
    before = {k: v.clone() for k, v in policy.params.items()}
    start = policy.mean_return(task, episodes=40, seed=1)
    adapted = policy.adapt(task, steps=3, episodes=40, lr=[0.5, 0.25])
    assert all(torch.equal(before[k], policy.params[k]) for k in before)
    assert not all(torch.equal(adapted.params[k], before[k]) for k in before)
    assert adapted.mean_return(task, episodes=40, seed=1) > start + 2.0
    same = policy.adapt(task, steps=3, episodes=40, lr=[0.5, 0.25])
    assert all(torch.equal(same.params[k], adapted.params[k]) for k in before)
    with pytest.raises(ValueError, match="lr must be > 0"):
        policy.adapt(task, lr=0.0)


def test_load_run_reads_a_run_directory(run: metarl.Run) -> None:
    again = metarl.load_run(run.path)
    assert (again.iteration, again.config) == (run.iteration, run.config)
    with pytest.raises(Exception, match="does not exist"):
        metarl.load_run(run.path / "nope")


def _sinusoid_run(root: Path) -> Path:
    out = root / "sinusoid"
    if not out.exists():
        metarl.train(
            out=out,
            overrides=[
                "kind=sinusoid", "iterations=2", "meta_batch_size=2", "model.hidden_sizes=[8]",
                "eval.num_tasks=3", "eval.shots=[5]", "eval.max_steps=1",
            ],
        )  # fmt: skip
    return out
