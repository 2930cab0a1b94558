"""``advantage_scope: batch``: the pretrained and oracle baselines learn from one linear baseline
fitted to all the iteration's episodes and advantages standardised over them (the paper's TRPO
for its MuJoCo baselines, rllab's ``LinearFeatureBaseline`` and ``center_adv`` on the whole
batch), and the key is refused where it cannot apply."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from recording import record_samples

from metarl.config import ConfigError, load_config
from metarl.rl.episodes import EpisodeBatch
from metarl.rl.learners import TRPOLearner, make_rl_learner, training_advantages
from metarl.rl.losses import surrogate_loss, task_rows
from metarl.rngs import Rngs

TINY = [
    "meta_batch_size=3",
    "episodes_per_task=2",
    "policy.hidden_sizes=[8]",
    "env.horizon=15",
    "sampler.backend=local",
    "batch=episodes",
]
ORACLE = [*TINY, "method=oracle", "advantage_scope=batch"]


def test_the_default_is_per_task_and_batch_is_refused_where_nothing_trains_on_it() -> None:
    assert load_config(None, TINY).advantage_scope == "task"  # every older run's
    assert load_config(None, ORACLE).advantage_scope == "batch"
    assert load_config(None, [*ORACLE, "method=pretrained"]).advantage_scope == "batch"
    for method in ("maml", "random"):
        with pytest.raises(ConfigError, match=f"method {method} needs advantage_scope: task") as e:
            load_config(None, [*ORACLE, f"method={method}"])
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="advantage_scope"):
        load_config(None, [*ORACLE, "advantage_scope=all"])


def _rllab_advantages(batch: EpisodeBatch, gamma: float) -> list[np.ndarray]:
    """rllab's LinearFeatureBaseline fitted to all paths, ``A = R - b`` (GAE with lambda 1 and 0
    after every path's end, as the paper's code), then ``center_adv`` over the whole batch."""
    paths = []
    for n in range(batch.num_episodes):
        length = int(batch.lengths[n])
        obs = batch.observations[:length, n].double().numpy()
        rew = batch.rewards[:length, n].double().numpy()
        ret = np.array([np.sum(rew[t:] * gamma ** np.arange(length - t)) for t in range(length)])
        o = np.clip(obs, -10, 10)
        al = np.arange(length).reshape(-1, 1) / 100.0
        feats = np.concatenate([o, o**2, al, al**2, al**3, np.ones((length, 1))], axis=1)
        paths.append((feats, ret))
    x = np.concatenate([f for f, _ in paths])
    y = np.concatenate([r for _, r in paths])
    w = np.linalg.lstsq(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y, rcond=-1)[0]
    adv = [r - f @ w for f, r in paths]
    flat = np.concatenate(adv)
    return [(a - flat.mean()) / (flat.std() + 1e-8) for a in adv]


def _sampled(args: list[str]) -> tuple[Any, EpisodeBatch]:
    torch.set_num_threads(1)
    cfg = load_config(None, args)
    learner = make_rl_learner(cfg, Rngs.from_seed(0))
    try:
        _, batch = learner.sample_with_theta(Rngs.from_seed(1))
    finally:
        learner.close()
    return cfg, batch


def test_batch_scope_is_rllabs_baseline_and_centring_over_all_episodes() -> None:
    cfg, batch = _sampled([*ORACLE, "env.id=metarl/HalfCheetahVel-v0", "env.horizon=10"])
    adv = training_advantages(cfg, batch).double()
    for n, expected in enumerate(_rllab_advantages(batch, cfg.gamma)):
        got = adv[: len(expected), n].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    mask = batch.mask.double()
    assert float((adv * mask).sum() / mask.sum()) == pytest.approx(0.0, abs=1e-6)
    # per task, the same batch's advantages differ: each task fits its own baseline
    per_task = training_advantages(load_config(None, [*TINY, "method=oracle"]), batch).double()
    assert float((per_task - adv).abs().max()) > 0.05


def test_batch_scope_of_one_task_is_the_per_task_advantages() -> None:
    cfg, batch = _sampled([*ORACLE, "meta_batch_size=1"])
    per_task = load_config(None, [*TINY, "method=oracle", "meta_batch_size=1"])
    assert torch.equal(training_advantages(cfg, batch), training_advantages(per_task, batch))


def test_the_trpo_step_follows_the_pooled_advantages() -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, [*ORACLE, "env.id=metarl/HalfCheetahVel-v0", "env.horizon=10"])
    rngs = Rngs.from_seed(0)
    learner = make_rl_learner(cfg, rngs)
    assert isinstance(learner, TRPOLearner)
    seen = record_samples(learner)
    before = learner.weights()
    try:
        stats = learner.step(rngs)
        policy = learner.policy
    finally:
        learner.close()
    batch = seen["batch"]

    def grad_norm(config: Any) -> float:
        rows = task_rows(batch, training_advantages(config, batch))
        grads = torch.func.grad(lambda p: surrogate_loss(policy, p, rows, rows.advantages))(before)
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))

    pooled, per_task = grad_norm(cfg), grad_norm(load_config(None, [*TINY, "method=oracle"]))
    assert stats["trpo/grad_norm"] == pytest.approx(pooled, rel=1e-4)
    assert abs(pooled - per_task) > 1e-3 * pooled
