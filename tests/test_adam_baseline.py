"""``optimizer: adam``: the pretrained and oracle baselines trained as the paper's 2-D navigation
pretrained baseline was (one full-batch Adam step per iteration on the tasks' policy-gradient
loss), resumed exactly, and refused for MAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recording import record_samples

from metarl.config import ConfigError, load_config
from metarl.rl.episodes import pad_tasks
from metarl.rl.learners import AdamLearner, make_rl_learner
from metarl.rl.losses import task_mean_vpg_loss, vpg_loss
from metarl.rngs import Rngs
from metarl.trainer import Trainer, load_checkpoint

TINY = [
    "meta_batch_size=3",
    "episodes_per_task=4",
    "policy.hidden_sizes=[8]",
    "env.horizon=20",
    "sampler.backend=local",
]
ADAM = [*TINY, "method=pretrained", "optimizer=adam", "adam_lr=0.01"]


def test_the_paper_pretrained_config_and_the_refusal_for_maml() -> None:
    cfg = load_config(None, ADAM)
    assert (cfg.optimizer, cfg.adam_lr, cfg.method) == ("adam", 0.01, "pretrained")
    assert load_config(None, TINY).optimizer == "trpo"  # the default, and every older run's
    with pytest.raises(ConfigError, match="method maml meta-trains with TRPO") as err:
        load_config(None, [*TINY, "optimizer=adam"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="adam_lr"):
        load_config(None, [*ADAM, "adam_lr=0"])


def test_one_step_is_torch_adams_first_step_on_the_task_mean_loss() -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, ADAM)
    rngs = Rngs.from_seed(0)
    learner = make_rl_learner(cfg, rngs)
    assert isinstance(learner, AdamLearner)
    seen = record_samples(learner)
    before = learner.weights()
    try:
        stats = learner.step(rngs)
        after = learner.weights()
        batch = seen["batch"]
        adv = learner.advantages(batch)
        grads = torch.func.grad(lambda p: task_mean_vpg_loss(learner.policy, p, batch, adv))(before)
    finally:
        learner.close()
    # Adam's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected to g and g^2.
    for name, g in grads.items():
        expected = before[name] - 0.01 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(after[name], expected, rtol=0, atol=1e-6)
    assert stats["adam/grad_norm"] > 0 and "trpo/kl_after" not in stats


def test_the_task_mean_loss_weighs_tasks_equally() -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, [*ADAM, "batch=episodes", "meta_batch_size=2"])
    learner = make_rl_learner(cfg, Rngs.from_seed(1))
    try:
        _, batch = learner.sample_with_theta(Rngs.from_seed(2))
        adv = learner.advantages(batch)
        params, policy = learner.params, learner.policy
        # equal steps per task: the mean over all steps
        torch.testing.assert_close(
            task_mean_vpg_loss(policy, params, batch, adv), vpg_loss(policy, params, batch, adv)
        )
        # one task with one episode, padded with empty columns: each task's own mean, then
        # the mean of the two (the mean over all steps would weigh the first task 4:1)
        short = pad_tasks([batch.task(0), batch.task(1).episodes(torch.tensor([0]))])
        adv = learner.advantages(short)
        e = short.episodes_per_task
        per_task = [
            vpg_loss(policy, params, short.task(k), adv[:, k * e : (k + 1) * e]) for k in (0, 1)
        ]
        got = task_mean_vpg_loss(policy, params, short, adv)
        torch.testing.assert_close(got, (per_task[0] + per_task[1]) / 2)
        assert not torch.allclose(got, vpg_loss(policy, params, short, adv))
    finally:
        learner.close()


def _train(out: Path, iterations: int, resume: bool = False) -> None:
    cfg = load_config(None, [*ADAM, f"iterations={iterations}"])
    Trainer(config=cfg, run_dir=out, make_learner=make_rl_learner, progress=False).run(
        resume=resume
    )


def test_resume_keeps_adams_moments_and_equals_an_unbroken_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _train(tmp_path / "straight", 3)
    _train(tmp_path / "broken", 2)
    ckpt = load_checkpoint(tmp_path / "broken")
    assert ckpt.learner["optimizer"]["state"], "the checkpoint holds Adam's moments"
    _train(tmp_path / "broken", 3, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert a.iteration == b.iteration == 3
    assert all(torch.equal(v, b.learner["params"][k]) for k, v in a.learner["params"].items())
