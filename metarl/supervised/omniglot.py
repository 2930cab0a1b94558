"""Few-shot Omniglot classification with MAML (paper, section 5.2): the learner and evaluation.

A meta-iteration draws a batch of N-way K-shot tasks from the meta-training characters, adapts
the conv net to each task's support set with :func:`metarl.adapt` (all tasks at once under
:func:`torch.func.vmap`, or one task after another: ``vectorize_inner``), scores the adapted
weights on the task's query set, and takes one Adam step on the mean query loss. The query pass
runs task by task: on a CPU one ordinary convolution per task is several times faster than the
grouped convolution that ``vmap`` makes of per-task weights (``benchmarks/omniglot.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from metarl.adaptation import Params, adapt
from metarl.config import ConfigError, InnerLoopConfig, OmniglotConfig, OmniglotEvalConfig
from metarl.devices import cpu_copy, resolve_device, to_device
from metarl.evaluation import curve_rows
from metarl.optim import restore_weights_and_optimizer
from metarl.rngs import Rngs, held_out_generator
from metarl.supervised.convnet import ConvNet, init_convnet_params, output_size
from metarl.supervised.networks import DTYPES
from metarl.supervised.omniglot_data import (
    IMAGE_SIZE,
    ClassPool,
    FewShotBatch,
    OmniglotDataError,
    check_task_shape,
    load_omniglot,
    sample_tasks,
    split_pools,
)

EVAL_STREAM = 0x0A1C  # mixes held-out task streams apart from training streams
EVAL_CHUNK = 50  # held-out tasks drawn and scored at a time (bounds the memory)


def make_model(config: OmniglotConfig) -> ConvNet:
    """The paper's conv net for ``config.task.ways`` classes (from ``config.model``)."""
    try:
        output_size(IMAGE_SIZE, blocks=config.model.blocks, downsample=config.model.downsample)
    except ValueError as err:
        raise ConfigError(f"config key 'model.blocks': {err}") from None
    return ConvNet(
        ways=config.task.ways,
        hidden=config.model.hidden,
        blocks=config.model.blocks,
        downsample=config.model.downsample,
    )


def load_pools(config: OmniglotConfig) -> tuple[ClassPool, ClassPool]:
    """The meta-training and meta-test class pools of ``config.data``."""
    data = config.data
    images = load_omniglot(data.root, cache_dir=data.cache_dir)
    found = len(images.characters)
    if data.train_characters >= found:
        raise ConfigError(
            f"config key 'data.train_characters': value {data.train_characters} leaves no "
            f"meta-test characters; {str(data.root)!r} holds {found} (the standard split "
            "is 1200 of 1623)"
        )
    return split_pools(images, data.train_characters)


def check_task(pool: ClassPool, *, ways: int, shots: int, query: int, query_key: str) -> None:
    """A :class:`ConfigError` naming the config keys when the split cannot supply the tasks."""
    try:
        check_task_shape(pool, ways=ways, shots=shots, query=query)
    except OmniglotDataError as err:
        raise ConfigError(f"config keys 'task.ways', 'task.shots', '{query_key}': {err}") from None


def cross_entropy(
    model: ConvNet, params: Params, x: Tensor, y: Tensor, *, fused_bn: bool = True
) -> Tensor:
    """Mean cross-entropy of one task's images ``x`` ``[B, 1, H, W]`` with labels ``y``.

    ``fused_bn`` must be False under ``vmap`` (see ``convnet.fused_batch_norm``).
    """
    return F.cross_entropy(model.forward_with(params, x, fused_bn=fused_bn), y)


def adapt_tasks(
    model: ConvNet,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    inner: InnerLoopConfig,
    *,
    vectorize: bool,
) -> Params:
    """Adapted weights of every task, each stacked along a leading task dimension.

    ``vectorize``: all tasks in one :func:`torch.func.vmap` call; otherwise one by one. Both
    give the same numbers (batch norm sees each task's support set alone either way).
    """

    def one(xs: Tensor, ys: Tensor) -> Params:
        return adapt(
            params,
            lambda p: cross_entropy(model, p, xs, ys, fused_bn=not vectorize),
            steps=inner.steps,
            lr=inner.lr,
            first_order=inner.first_order,
        )

    if vectorize:
        adapted: Params = torch.func.vmap(one)(x_support, y_support)
        return adapted
    per_task = [one(xs, ys) for xs, ys in zip(x_support, y_support, strict=True)]
    return {name: torch.stack([p[name] for p in per_task]) for name in params}


def query_scores(
    model: ConvNet, adapted: Params, x_query: Tensor, y_query: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-task query loss (differentiable) and accuracy, both ``[tasks]``, task by task."""
    losses, accuracies = [], []
    for t in range(x_query.shape[0]):
        weights = {k: v[t] for k, v in adapted.items()}
        logits = model.forward_with(weights, x_query[t], fused_bn=True)
        losses.append(F.cross_entropy(logits, y_query[t]))
        accuracies.append((logits.argmax(-1) == y_query[t]).to(logits.dtype).mean())
    return torch.stack(losses), torch.stack(accuracies).detach()


def maml_losses(
    model: ConvNet, params: Params, batch: FewShotBatch, inner: InnerLoopConfig, *, vectorize: bool
) -> tuple[Tensor, Tensor]:
    """Query loss (differentiable w.r.t. ``params``) and accuracy of every adapted task."""
    adapted = adapt_tasks(
        model, params, batch.x_support, batch.y_support, inner, vectorize=vectorize
    )
    return query_scores(model, adapted, batch.x_query, batch.y_query)


class OmniglotLearner:
    """Meta-trains the conv net with MAML (second or first order) and Adam."""

    def __init__(self, config: OmniglotConfig, rngs: Rngs) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.model = make_model(config)
        self.train_pool, _ = load_pools(config)
        task = config.task
        check_task(
            self.train_pool,
            ways=task.ways,
            shots=task.shots,
            query=task.query,
            query_key="task.query",
        )
        weights = init_convnet_params(self.model, rngs.torch, self.dtype)
        self.params: Params = {
            k: v.requires_grad_() for k, v in to_device(weights, self.device).items()
        }
        self.optimizer = torch.optim.Adam(self.params.values(), lr=config.meta_lr)

    def sample_batch(self, rngs: Rngs) -> FewShotBatch:
        """A fresh meta-batch of training tasks (drawn on the CPU, on the learner's device)."""
        cfg = self.config
        batch = sample_tasks(
            self.train_pool,
            num_tasks=cfg.meta_batch_size,
            ways=cfg.task.ways,
            shots=cfg.task.shots,
            query=cfg.task.query,
            generator=rngs.torch,
            dtype=self.dtype,
        )
        return _moved(batch, self.device)

    def step(self, rngs: Rngs) -> dict[str, float]:
        """One outer iteration on a fresh meta-batch; returns its statistics."""
        cfg = self.config
        batch = self.sample_batch(rngs)
        self.optimizer.zero_grad(set_to_none=True)
        losses, accuracies = maml_losses(
            self.model, self.params, batch, cfg.inner, vectorize=cfg.vectorize_inner
        )
        loss = losses.mean()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return {
            "post_adapt_query_loss": float(loss.detach()),
            "post_adapt_query_accuracy": float(accuracies.mean()),
        }

    def weights(self) -> Params:
        """A copy of the current weights on the CPU (what a checkpoint holds)."""
        return cpu_copy(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.weights(), "optimizer": cpu_copy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_weights_and_optimizer(self.params, self.optimizer, state, self.config.meta_lr)

    def close(self) -> None:
        """Nothing to release."""


# --------------------------------------------------------------------------- evaluation


def task_accuracy_curve(
    model: ConvNet,
    params: Params,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    *,
    lr: float,
    max_steps: int,
) -> Tensor:
    """One task's query accuracy after 0..max_steps plain gradient steps on its support set."""
    xs, ys = support
    xq, yq = query
    current, accuracies = params, []
    for step in range(max_steps + 1):
        if step > 0:
            loss_fn = functools.partial(cross_entropy, model, x=xs, y=ys)
            current = adapt(current, loss_fn, steps=1, lr=lr, first_order=True)
        with torch.no_grad():
            hits = model.forward_with(current, xq, fused_bn=True).argmax(-1) == yq
        accuracies.append(hits.double().mean())
    return torch.stack(accuracies)


def accuracy_curve(
    model: ConvNet, params: Params, batch: FewShotBatch, *, lr: float, max_steps: int
) -> Tensor:
    """Query accuracy of every task after 0..max_steps fine-tuning steps: ``[steps + 1, tasks]``.

    Each task is fine-tuned alone from ``params`` (as at test time in the paper).
    """
    curves = [
        task_accuracy_curve(model, params, (xs, ys), (xq, yq), lr=lr, max_steps=max_steps)
        for xs, ys, xq, yq in zip(
            batch.x_support, batch.y_support, batch.x_query, batch.y_query, strict=True
        )
    ]
    return torch.stack(curves, dim=1)


def eval_generator(seed: int, ways: int, shots: int) -> torch.Generator:
    """The held-out task stream for N-way K-shot: derived so it never equals a training stream."""
    return held_out_generator(EVAL_STREAM, seed, ways, shots)


def method_name(config: OmniglotConfig) -> str:
    """``maml`` or ``fomaml`` (first order), the label of a run in tables and figures."""
    return "fomaml" if config.inner.first_order else "maml"


def _cast(batch: FewShotBatch, dtype: torch.dtype) -> FewShotBatch:
    """The batch with its images in ``dtype``."""
    return dataclasses.replace(
        batch, x_support=batch.x_support.to(dtype), x_query=batch.x_query.to(dtype)
    )


def _on_device(config: OmniglotConfig, params: Params) -> Params:
    """A run's weights on its config's device."""
    return to_device(params, resolve_device(config.device))


def _moved(batch: FewShotBatch, device: torch.device) -> FewShotBatch:
    """The batch's images and labels on ``device``."""
    return dataclasses.replace(
        batch, x_support=batch.x_support.to(device), y_support=batch.y_support.to(device),
        x_query=batch.x_query.to(device), y_query=batch.y_query.to(device),
    )  # fmt: skip


def _check_comparable(runs: Sequence[tuple[OmniglotConfig, Params]]) -> None:
    base = runs[0][0]
    for config, _ in runs[1:]:
        if config.task.ways != base.task.ways:
            raise ConfigError(
                f"cannot compare a {config.task.ways}-way run with a {base.task.ways}-way run: "
                "their output layers differ"
            )


def evaluate_omniglot(
    runs: Sequence[tuple[OmniglotConfig, Params]], eval_cfg: OmniglotEvalConfig
) -> list[dict[str, Any]]:
    """Adaptation-curve rows (``mean_accuracy``, ``ci95_accuracy``) of every run on held-out tasks.

    All runs are scored on the same tasks of the meta-test characters, drawn with
    ``eval_cfg.seed`` in the first run's N-way K-shot setting, with ``eval_cfg.query`` query
    images per class; each run is fine-tuned with ``eval_cfg.lr`` or, when that is null, its own
    training inner lr.
    """
    _check_comparable(runs)
    base = runs[0][0]
    ways, shots = base.task.ways, base.task.shots
    _, test_pool = load_pools(base)
    check_task(test_pool, ways=ways, shots=shots, query=eval_cfg.query, query_key="eval.query")
    generator = eval_generator(eval_cfg.seed, ways, shots)
    models = [(make_model(config), config, _on_device(config, params)) for config, params in runs]
    per_run: list[list[Tensor]] = [[] for _ in runs]
    for start in range(0, eval_cfg.num_tasks, EVAL_CHUNK):
        batch = sample_tasks(
            test_pool,
            num_tasks=min(EVAL_CHUNK, eval_cfg.num_tasks - start),
            ways=ways,
            shots=shots,
            query=eval_cfg.query,
            generator=generator,
        )
        for i, (model, config, params) in enumerate(models):
            lr = eval_cfg.lr or config.inner.lr
            cast = _moved(_cast(batch, DTYPES[config.dtype]), resolve_device(config.device))
            per_run[i].append(
                accuracy_curve(model, params, cast, lr=lr, max_steps=eval_cfg.max_steps)
            )
    rows: list[dict[str, Any]] = []
    for (_, config, _), chunks in zip(models, per_run, strict=True):
        curve = torch.cat(chunks, dim=1).cpu().numpy()
        rows += curve_rows(
            curve, metric="accuracy", method=method_name(config), extra={"shots": shots}
        )
    return rows
