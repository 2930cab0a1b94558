"""MAML-TRPO end to end: determinism, exact resume, NaN stop, and real learning on Navigation2D."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.config import load_config
from metarl.rl.learners import MAMLTRPOLearner, make_rl_learner, torch_threads
from metarl.rngs import Rngs
from metarl.trainer import Trainer, TrainingError, load_checkpoint

TINY = [
    "kind=rl",
    "meta_batch_size=3",
    "episodes_per_task=4",
    "policy.hidden_sizes=[8]",
    "env.horizon=20",
]


def _weights_after(iterations: int, seed: int = 0, extra: tuple[str, ...] = ()) -> dict:
    cfg = load_config(None, [*TINY, f"seed={seed}", *extra])
    rngs = Rngs.from_seed(cfg.seed)
    learner = make_rl_learner(cfg, rngs)  # MAMLTRPOLearner unless `method=` says otherwise
    try:
        for _ in range(iterations):
            learner.step(rngs)
        return learner.weights()
    finally:
        learner.close()


def test_same_seed_gives_identical_weights_after_two_iterations() -> None:
    a, b, c = _weights_after(2), _weights_after(2), _weights_after(2, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", ["maml", "pretrained"])
def test_learner_threads_only_change_the_last_bits_and_are_restored(method: str) -> None:
    torch.set_num_threads(1)
    wide = ("policy.hidden_sizes=[64,64]", f"method={method}")
    one = _weights_after(1, extra=wide)
    two = _weights_after(1, extra=(*wide, "learner_threads=2"))
    assert torch.get_num_threads() == 1
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)


def test_torch_threads_restores_the_count_after_an_error() -> None:
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError, match="inside"), torch_threads(2):
        assert torch.get_num_threads() == 2
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 1


def test_first_order_flag_changes_training() -> None:
    a = _weights_after(1)
    b = _weights_after(1, extra=("inner.first_order=true",))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def _train(out: Path, iterations: int, resume: bool = False) -> None:
    cfg = load_config(None, [*TINY, f"iterations={iterations}"])
    Trainer(config=cfg, run_dir=out, make_learner=MAMLTRPOLearner, progress=False).run(
        resume=resume
    )


def test_resume_after_a_stop_equals_an_unbroken_run(tmp_path: Path) -> None:
    _train(tmp_path / "straight", 3)
    _train(tmp_path / "broken", 2)
    _train(tmp_path / "broken", 3, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert a.iteration == b.iteration == 3
    assert all(torch.equal(v, b.learner["params"][k]) for k, v in a.learner["params"].items())


@dataclass(frozen=True)
class Blowup:
    step: int


class BlowupEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observations turn NaN at the task's step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def __init__(self) -> None:
        self._task, self.t = Blowup(3), 0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Blowup]:
        return [Blowup(int(s)) for s in rng.integers(2, 5, num_tasks)]

    def set_task(self, task: Blowup) -> None:
        self._task = task

    @property
    def task(self) -> Blowup:
        return self._task

    @task.setter
    def task(self, task: Blowup) -> None:
        self.set_task(task)

    def reset(self, *, seed: int | None = None, options: Any = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray):
        self.t += 1
        value = np.nan if self.t >= self._task.step else 0.0
        return np.full(2, value, np.float32), 0.0, False, False, {}


gym.register("metarl_test/Blowup-v0", entry_point=BlowupEnv, max_episode_steps=10)


def test_nan_observation_stops_training_with_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, "env.id=metarl_test/Blowup-v0", "iterations=2"])
    trainer = Trainer(config=cfg, run_dir=tmp_path, make_learner=MAMLTRPOLearner, progress=False)
    with pytest.raises(TrainingError, match=r"iteration 1: sampler: non-finite observation"):
        trainer.run()


def test_short_navigation_run_learns_to_adapt(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "kind=rl",
            "iterations=20",
            "meta_batch_size=10",
            "episodes_per_task=10",
            "policy.hidden_sizes=[32, 32]",
        ],
    )
    Trainer(config=cfg, run_dir=tmp_path, make_learner=MAMLTRPOLearner, progress=False).run()
    with (tmp_path / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    pre = np.array([float(r["pre_adapt_return"]) for r in rows])
    post = np.array([float(r["post_adapt_return"]) for r in rows])
    # Random initial policy: around -100 per episode; a useful meta-policy adapts to the goal.
    assert post[-5:].mean() > post[:3].mean() + 30, post
    assert post[-5:].mean() > pre[-5:].mean() + 4, (pre, post)
    assert sum(float(r["trpo/step_accepted"]) for r in rows) >= 10


@pytest.mark.parametrize("method", ["maml", "pretrained"])
def test_hvp_subsample_trains_and_changes_the_step(method: str) -> None:
    cfg = load_config(None, [*TINY, f"method={method}"])
    assert cfg.trpo.hvp_subsample == 1.0  # the paper's: all episodes
    full = _weights_after(1, extra=(f"method={method}",))
    sub = _weights_after(1, extra=(f"method={method}", "trpo.hvp_subsample=0.5"))
    assert all(bool(torch.isfinite(v).all()) for v in sub.values())
    assert not all(torch.equal(full[k], sub[k]) for k in full)
