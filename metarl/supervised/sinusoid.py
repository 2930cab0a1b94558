"""Sinusoid regression (MAML paper, section 5.1): tasks, the meta-learner and the baseline.

A task is ``y = A sin(x - phase)``; the learner sees K support points, adapts with
:func:`metarl.adapt`, and is scored on query points of the same sine. All tasks of a batch are
adapted at once with :func:`torch.func.vmap`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metarl.adaptation import Params, adapt
from metarl.config import (
    InnerLoopConfig,
    SinusoidConfig,
    SinusoidEvalConfig,
    SinusoidTaskConfig,
)
from metarl.devices import cpu_copy, resolve_device, to_device
from metarl.evaluation import curve_rows
from metarl.optim import restore_weights_and_optimizer
from metarl.rngs import Rngs, held_out_generator
from metarl.supervised.networks import DTYPES, MLP, apply, init_params

EVAL_STREAM = 0x5E1D  # mixes held-out task streams apart from training streams


@dataclass(frozen=True)
class SinusoidBatch:
    """Support and query points of a batch of tasks: ``x_*``/``y_*`` are ``[tasks, points, 1]``."""

    amplitude: Tensor
    phase: Tensor
    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> SinusoidBatch:
        """The batch on ``device`` (in ``dtype`` if given)."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return SinusoidBatch(*(x.to(device=device, dtype=dtype) for x in fields))


def _uniform(
    shape: tuple[int, ...], bounds: tuple[float, float], gen: torch.Generator, dtype: torch.dtype
) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=dtype)


def sample_sinusoid_tasks(
    task: SinusoidTaskConfig,
    *,
    num_tasks: int,
    k_support: int,
    k_query: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> SinusoidBatch:
    """Draw ``num_tasks`` sines and their support/query points from ``generator``."""
    amplitude = _uniform((num_tasks, 1, 1), task.amplitude, generator, dtype)
    phase = _uniform((num_tasks, 1, 1), task.phase, generator, dtype)
    x = _uniform((num_tasks, k_support + k_query, 1), task.x_range, generator, dtype)
    y = amplitude * torch.sin(x - phase)
    return SinusoidBatch(
        amplitude=amplitude.flatten(),
        phase=phase.flatten(),
        x_support=x[:, :k_support],
        y_support=y[:, :k_support],
        x_query=x[:, k_support:],
        y_query=y[:, k_support:],
    )


def make_model(config: SinusoidConfig) -> MLP:
    """The regressor of the paper: 1 -> 40 -> 40 -> 1 with ReLU (from ``config.model``)."""
    return MLP(
        in_features=1,
        out_features=1,
        hidden_sizes=config.model.hidden_sizes,
        activation=config.model.activation,
    )


def mse(model: MLP, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of the model with weights ``params`` on ``(x, y)``."""
    return ((apply(model, params, x) - y) ** 2).mean()


def maml_losses(model: MLP, params: Params, batch: SinusoidBatch, inner: InnerLoopConfig) -> Tensor:
    """Per-task query loss after adapting on the support set: ``[tasks]``, differentiable."""

    def task_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        adapted = adapt(
            params,
            lambda p: mse(model, p, xs, ys),
            steps=inner.steps,
            lr=inner.lr,
            first_order=inner.first_order,
        )
        return mse(model, adapted, xq, yq)

    losses: Tensor = torch.func.vmap(task_loss)(
        batch.x_support, batch.y_support, batch.x_query, batch.y_query
    )
    return losses


def adaptation_curve(
    model: MLP,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    lr: float,
    max_steps: int,
) -> Tensor:
    """Query loss of every task after 0..max_steps fine-tuning steps: ``[max_steps + 1, tasks]``."""

    def curve(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        current = params
        losses = [mse(model, current, xq, yq)]
        for _ in range(max_steps):
            current = adapt(
                current, lambda p: mse(model, p, xs, ys), steps=1, lr=lr, first_order=True
            )
            losses.append(mse(model, current, xq, yq))
        return torch.stack(losses)

    with torch.no_grad():
        out: Tensor = torch.func.vmap(curve)(x_support, y_support, x_query, y_query)
    return out.T


class SinusoidLearner:
    """Meta-trains (``maml``) or jointly trains (``pretrained``) the regressor with Adam."""

    def __init__(self, config: SinusoidConfig, rngs: Rngs) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.model = make_model(config)
        weights = init_params(self.model, rngs.torch, self.dtype)
        self.params: Params = {
            k: v.requires_grad_() for k, v in to_device(weights, self.device).items()
        }
        self.optimizer = torch.optim.Adam(self.params.values(), lr=config.meta_lr, fused=True)

    def step(self, rngs: Rngs) -> dict[str, float]:
        """One outer iteration on a fresh meta-batch; returns its statistics."""
        cfg = self.config
        batch = sample_sinusoid_tasks(
            cfg.task,
            num_tasks=cfg.meta_batch_size,
            k_support=cfg.task.k_support,
            k_query=cfg.task.k_query,
            generator=rngs.torch,
            dtype=self.dtype,
        ).to(self.device)
        with torch.no_grad():
            pre = mse(self.model, self.params, batch.x_query, batch.y_query)
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.method == "maml":
            loss = maml_losses(self.model, self.params, batch, cfg.inner).mean()
            stats_key = "post_adapt_query_loss"
        else:
            x = torch.cat([batch.x_support, batch.x_query], dim=1)
            y = torch.cat([batch.y_support, batch.y_query], dim=1)
            loss = mse(self.model, self.params, x, y)
            stats_key = "train_loss"
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return {stats_key: float(loss.detach()), "pre_adapt_query_loss": float(pre)}

    def weights(self) -> Params:
        """A copy of the current weights on the CPU (what a checkpoint holds)."""
        return cpu_copy(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.weights(), "optimizer": cpu_copy(self.optimizer.state_dict())}

    def close(self) -> None:
        """Nothing to release."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_weights_and_optimizer(self.params, self.optimizer, state, self.config.meta_lr)


def eval_generator(seed: int, shots: int) -> torch.Generator:
    """The held-out task stream for ``shots``: derived so it never equals a training stream."""
    return held_out_generator(EVAL_STREAM, seed, shots)


def evaluate_sinusoid(
    runs: Sequence[tuple[SinusoidConfig, Params]], eval_cfg: SinusoidEvalConfig
) -> list[dict[str, Any]]:
    """Adaptation-curve rows (``mean_loss``, ``ci95_loss``) for every run, K and step.

    All runs are scored on the same held-out tasks (drawn from the first run's task
    distribution with ``eval_cfg.seed``), each fine-tuned with ``eval_cfg.lr`` or, when that is
    null, its own training inner lr.
    """
    base = runs[0][0]
    rows: list[dict[str, Any]] = []
    for shots in eval_cfg.shots:
        batch = sample_sinusoid_tasks(
            base.task,
            num_tasks=eval_cfg.num_tasks,
            k_support=shots,
            k_query=eval_cfg.query_points,
            generator=eval_generator(eval_cfg.seed, shots),
            dtype=torch.float64,
        )
        for config, params in runs:
            device = resolve_device(config.device)
            run = batch.to(device, DTYPES[config.dtype])
            curve = adaptation_curve(
                make_model(config),
                to_device(params, device),
                run.x_support,
                run.y_support,
                run.x_query,
                run.y_query,
                lr=eval_cfg.lr or config.inner.lr,
                max_steps=eval_cfg.max_steps,
            )
            rows += curve_rows(
                curve.double().cpu().numpy(),
                metric="loss",
                method=config.method,
                extra={"shots": shots},
            )
    return rows
