"""Sinusoid regression: the task distribution, determinism, and real learning."""

import math

import numpy as np
import torch

from metarl.config import load_config
from metarl.rngs import Rngs
from metarl.supervised.sinusoid import (
    SinusoidLearner,
    adaptation_curve,
    eval_generator,
    evaluate_sinusoid,
    make_model,
    maml_losses,
    sample_sinusoid_tasks,
)


def test_task_distribution_matches_the_paper() -> None:
    cfg = load_config(None, ["kind=sinusoid"])
    batch = sample_sinusoid_tasks(
        cfg.task,
        num_tasks=4000,
        k_support=10,
        k_query=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert batch.x_support.shape == (4000, 10, 1) and batch.x_query.shape == (4000, 10, 1)
    a, p = batch.amplitude, batch.phase
    assert 0.1 <= a.min() and a.max() <= 5.0 and abs(a.mean().item() - 2.55) < 0.06
    assert 0.0 <= p.min() and p.max() <= math.pi and abs(p.mean().item() - math.pi / 2) < 0.04
    x = torch.cat([batch.x_support, batch.x_query], 1)
    assert -5.0 <= x.min() and x.max() <= 5.0
    expected = a.view(-1, 1, 1) * torch.sin(batch.x_query - p.view(-1, 1, 1))
    torch.testing.assert_close(batch.y_query, expected)


def test_same_seed_gives_identical_weights_and_other_seed_does_not() -> None:
    cfg = load_config(None, ["kind=sinusoid", "model.hidden_sizes=[16, 16]"])

    def run(seed: int) -> dict[str, torch.Tensor]:
        rngs = Rngs.from_seed(seed)
        learner = SinusoidLearner(cfg, rngs)
        for _ in range(5):
            learner.step(rngs)
        return learner.weights()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_first_order_flag_changes_the_meta_gradient() -> None:
    cfg = load_config(None, ["kind=sinusoid", "dtype=float64"])
    learner = SinusoidLearner(cfg, Rngs.from_seed(0))
    batch = sample_sinusoid_tasks(
        cfg.task,
        num_tasks=5,
        k_support=10,
        k_query=10,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    grads = []
    for fo in (False, True):
        inner = load_config(None, ["kind=sinusoid", f"inner.first_order={str(fo).lower()}"]).inner
        loss = maml_losses(learner.model, learner.params, batch, inner).mean()
        grads.append(
            torch.cat(
                [g.flatten() for g in torch.autograd.grad(loss, list(learner.params.values()))]
            )
        )
    rel = (grads[0] - grads[1]).norm() / grads[0].norm()
    assert rel > 1e-3


def test_short_meta_training_makes_adaptation_pay_off() -> None:
    cfg = load_config(None, ["kind=sinusoid", "iterations=1500"])
    rngs = Rngs.from_seed(0)
    learner = SinusoidLearner(cfg, rngs)
    for _ in range(cfg.iterations):
        learner.step(rngs)
    batch = sample_sinusoid_tasks(
        cfg.task, num_tasks=200, k_support=10, k_query=50, generator=eval_generator(0, 10)
    )
    curve = adaptation_curve(
        learner.model,
        learner.weights(),
        batch.x_support,
        batch.y_support,
        batch.x_query,
        batch.y_query,
        lr=0.01,
        max_steps=1,
    ).mean(1)
    pre, post = curve.tolist()
    # The task-agnostic mean loss is ~E[A^2]/2 ~ 4.2; one step from a meta-learned init
    # must take far more than half of it away.
    assert post < 0.5 * pre, (pre, post)
    assert post < 1.5


def test_evaluation_uses_the_same_held_out_tasks_for_every_method() -> None:
    cfg = load_config(
        None,
        [
            "kind=sinusoid",
            "model.hidden_sizes=[8]",
            "eval.num_tasks=20",
            "eval.max_steps=2",
            "eval.shots=[5]",
        ],
    )
    params = SinusoidLearner(cfg, Rngs.from_seed(0)).weights()
    rows = evaluate_sinusoid([(cfg, params), (cfg, params)], cfg.eval)
    assert len(rows) == 2 * 3
    first, second = rows[:3], rows[3:]
    assert [r["mean_loss"] for r in first] == [r["mean_loss"] for r in second]
    again = evaluate_sinusoid([(cfg, params)], cfg.eval)
    assert [r["mean_loss"] for r in again] == [r["mean_loss"] for r in first]
    other_seed = evaluate_sinusoid(
        [(cfg, params)], load_config(None, ["kind=sinusoid", "eval.seed=7"]).eval
    )
    assert other_seed[0]["mean_loss"] != first[0]["mean_loss"]


def test_held_out_stream_differs_from_training_stream() -> None:
    cfg = load_config(None, ["kind=sinusoid"])
    for seed in (0, 10_000):
        train = sample_sinusoid_tasks(
            cfg.task, num_tasks=25, k_support=10, k_query=10, generator=Rngs.from_seed(seed).torch
        )
        held = sample_sinusoid_tasks(
            cfg.task, num_tasks=25, k_support=10, k_query=10, generator=eval_generator(seed, 10)
        )
        overlap = np.intersect1d(train.amplitude.numpy(), held.amplitude.numpy())
        assert overlap.size == 0


def test_model_is_the_papers_network() -> None:
    model = make_model(load_config(None, ["kind=sinusoid"]))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
