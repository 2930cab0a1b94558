"""Adaptation curves of RL runs: files, reproducibility, held-out tasks, baselines, errors."""

import csv
import re
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

from metarl import envs
from metarl.cli import main
from metarl.config import load_config
from metarl.rl.evaluation import eval_rng, evaluate_rl
from metarl.rl.learners import make_rl_learner
from metarl.rl.sampling.oracle import OracleEnv, task_features
from metarl.rngs import Rngs
from metarl.tasks import check_task_env

TINY = [
    "--set",
    "kind=rl",
    "--set",
    "meta_batch_size=3",
    "--set",
    "episodes_per_task=3",
    "--set",
    "policy.hidden_sizes=[8]",
    "--set",
    "env.horizon=15",
    "--set",
    "iterations=2",
    "--set",
    "eval.num_tasks=4",
    "--set",
    "eval.episodes_per_task=3",
    "--no-progress",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("maml", "pretrained", "oracle", "random"):
        out[method] = root / method
        assert main(["train", "--out", str(out[method]), *TINY, "--set", f"method={method}"]) == 0
    return out


def test_evaluate_writes_the_curve_csv_and_png(runs: dict[str, Path]) -> None:
    others = [str(runs[m]) for m in ("pretrained", "random", "oracle")]
    assert main(["evaluate", str(runs["maml"]), "--compare", *others, "--steps", "2"]) == 0
    rows = _rows(runs["maml"] / "adaptation.csv")
    assert list(rows[0]) == [
        "method",
        "step",
        "mean_return",
        "ci95_return",
        "num_tasks",
        "episodes_per_task",
    ]
    by_method: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    assert {m: len(v) for m, v in by_method.items()} == {
        "maml": 3,
        "pretrained": 3,
        "random": 3,
        "oracle": 1,
    }
    for r in rows:
        # Navigation2D: reward is minus a distance (< ~1.5 within 15 steps of 0.1 from the origin)
        assert -15 * 1.5 < float(r["mean_return"]) < 0 and float(r["ci95_return"]) > 0
        assert r["num_tasks"] == "4"
    with Image.open(runs["maml"] / "adaptation.png") as img:
        assert img.size == (450, 360) and len(img.getcolors(1 << 16) or []) > 10


def test_evaluation_is_reproducible_for_a_seed(runs: dict[str, Path]) -> None:
    out = []
    for seed in ("3", "3", "4"):
        assert main(["evaluate", str(runs["maml"]), "--seed", seed, "--steps", "1"]) == 0
        out.append(_rows(runs["maml"] / "adaptation.csv"))
    assert out[0] == out[1]
    assert out[0][0]["mean_return"] != out[2][0]["mean_return"]


def test_held_out_tasks_are_disjoint_from_the_training_stream() -> None:
    env = gym.make("metarl/Navigation2D-v0").unwrapped
    for seed in (0, 1, 10_000):
        train = env.sample_tasks(200, Rngs.from_seed(seed).numpy)
        held = env.sample_tasks(200, eval_rng(seed))
        assert not set(train) & set(held)


def test_user_env_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        import gymnasium as gym
        import numpy as np

        @dataclass(frozen=True)
        class Target:
            value: float

        class LineEnv(gym.Env):
            observation_space = gym.spaces.Box(-5.0, 5.0, shape=(1,), dtype=np.float32)
            action_space = gym.spaces.Box(-0.5, 0.5, shape=(1,), dtype=np.float32)
            def __init__(self):
                self._task, self.x = Target(1.0), 0.0
            def sample_tasks(self, n, rng):
                return [Target(float(v)) for v in rng.uniform(-1, 1, n)]
            def set_task(self, task):
                self._task = task
            @property
            def task(self):
                return self._task
            @task.setter
            def task(self, task):
                self.set_task(task)
            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.x = 0.0
                return np.zeros(1, np.float32), {}
            def step(self, a):
                self.x = float(np.clip(self.x + np.clip(a[0], -0.5, 0.5), -5, 5))
                reward = -abs(self.x - self._task.value)
                return np.array([self.x], np.float32), reward, False, False, {}

        gym.register("mine/Line-v0", entry_point=LineEnv, max_episode_steps=10)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(
        None,
        [
            "kind=rl",
            "env.id=my_tasks:mine/Line-v0",
            "env.horizon=10",
            "policy.hidden_sizes=[4]",
            "eval.num_tasks=3",
            "eval.episodes_per_task=2",
            "eval.max_steps=1",
        ],
    )
    params = make_rl_learner(cfg, Rngs.from_seed(0)).weights()
    rows = evaluate_rl([(cfg, params)], cfg.eval)
    assert [r["step"] for r in rows] == [0, 1] and all(r["mean_return"] < 0 for r in rows)
    sys.modules.pop("my_tasks", None)


def test_bad_runs_and_ids_are_clear_errors(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["train", "--out", str(tmp_path / "x"), *TINY, "--set", "env.id=metarl/Nope-v0"]) == 2
    )
    assert "config key 'env.id': unknown env id 'metarl/Nope-v0'" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "s"),
                "--set",
                "kind=sinusoid",
                "--set",
                "iterations=1",
                "--no-progress",
            ]
        )
        == 0
    )  # a sinusoid run
    assert main(["evaluate", str(runs["maml"]), "--compare", str(tmp_path / "s")]) == 2
    assert "is a 'sinusoid' run" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "s"), "--episodes", "3"]) == 2
    assert "--episodes does not apply to 'sinusoid' runs" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "checkpoint.pt").write_bytes(b"\x80garbage")
    assert main(["evaluate", str(tmp_path / "broken")]) == 2
    assert "corrupt or not a metarl checkpoint" in capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err


def test_runs_on_differently_made_envs_are_not_compared() -> None:
    """Runs whose envs were made with other constructor arguments (``env.kwargs``, e.g. another
    time step) do not face the same tasks: comparing them is a clear error."""
    sets = ["env.id=metarl/HalfCheetahVel-v0", "env.horizon=5", "policy.hidden_sizes=[4]"]
    sets += ["eval.num_tasks=2", "eval.episodes_per_task=1", "eval.max_steps=0"]
    v5 = load_config(None, ["kind=rl", *sets])
    paper = load_config(None, ["kind=rl", *sets, "env.kwargs.frame_skip=1"])
    params = make_rl_learner(v5, Rngs.from_seed(0)).weights()
    message = "made with different env.kwargs: {'frame_skip': 1} and {}"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_rl([(v5, params), (paper, params)], v5.eval)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_oracle_env_shows_the_task_and_passes_the_checker(env_id: str) -> None:
    oracle = OracleEnv(gym.make(env_id))
    check_task_env(oracle)
    task = oracle.sample_tasks(1, np.random.default_rng(3))[0]
    oracle.set_task(task)
    obs, _ = oracle.reset(seed=0)
    k = task_features(task).size
    np.testing.assert_array_equal(obs[-k:], task_features(task))
    obs, *_ = oracle.step(oracle.action_space.sample())
    np.testing.assert_array_equal(obs[-k:], task_features(task))
    assert oracle.observation_space.shape[0] == gym.make(env_id).observation_space.shape[0] + k


def test_pretrained_learner_improves_and_random_learner_stays_put() -> None:
    base = ["kind=rl", "meta_batch_size=8", "episodes_per_task=5", "policy.hidden_sizes=[16]"]
    rngs = Rngs.from_seed(0)
    learner = make_rl_learner(load_config(None, [*base, "method=pretrained"]), rngs)
    returns = [learner.step(rngs)["pre_adapt_return"] for _ in range(12)]
    learner.close()
    assert np.mean(returns[-3:]) > np.mean(returns[:3]) + 10, returns
    rngs = Rngs.from_seed(0)
    rand = make_rl_learner(load_config(None, [*base, "method=random"]), rngs)
    before = rand.weights()
    rand.step(rngs)
    assert all(torch.equal(before[k], v) for k, v in rand.weights().items())
    rand.close()
