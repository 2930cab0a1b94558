"""Adaptation curves of RL runs: the return on held-out tasks after 0, 1, 2, ... policy-gradient
steps, every run fine-tuned from its weights on the same tasks (the paper's test protocol)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from metarl.config import RLConfig, RLEvalConfig
from metarl.devices import resolve_device, to_cpu, to_device
from metarl.evaluation import curve_rows
from metarl.rl.episodes import EpisodeBatch, split_tasks
from metarl.rl.learners import advantages_of, device_policies, task_env
from metarl.rl.maml_trpo import adapt_policy
from metarl.rl.policies import Params, Policy
from metarl.rl.sampling import EpisodeSampler, make_sampler
from metarl.rl.sampling.envs import make_env
from metarl.rl.sampling.step_budget import sample_step_budget

log = logging.getLogger(__name__)

EVAL_STREAM = 0xE7A1  # mixes held-out task streams apart from training streams


def eval_rng(seed: int) -> np.random.Generator:
    """The held-out task stream: derived so it never equals a training stream."""
    return np.random.default_rng(np.random.SeedSequence([EVAL_STREAM, seed]))


def step_lrs(eval_cfg: RLEvalConfig, train_lr: float) -> list[float]:
    """The inner lr of each test step: ``eval.lr`` with its last value repeated; without it
    ``train_lr`` for the first step and half of it after (the paper's test scripts)."""
    given = list(eval_cfg.lr) if eval_cfg.lr is not None else [train_lr, train_lr / 2]
    return [given[min(i, len(given) - 1)] for i in range(eval_cfg.max_steps)]


def adapt_step(
    policy: Policy, params: Params, episodes: EpisodeBatch, advantages: torch.Tensor, lr: float
) -> Params:
    """One VPG step per task from per-task weights ``[K, ...]`` with ``lr`` (no meta-graph
    kept): how evaluation, and :meth:`metarl.api.TrainedPolicy.adapt`, fine-tune."""
    fn = functools.partial(adapt_policy, policy, steps=1, lr=lr, first_order=True)
    adapted: Params = torch.func.vmap(fn)(
        params, episodes.by_task(), split_tasks(advantages, episodes.num_tasks)
    )
    return {k: v.detach() for k, v in adapted.items()}


def adaptation_returns(
    config: RLConfig,
    params: Params,
    tasks: Sequence[Any],
    sampler: EpisodeSampler,
    eval_cfg: RLEvalConfig,
    *,
    seed: int,
) -> AdaptationCurve:
    """Mean return per task after 0..max_steps policy-gradient steps, and the number of
    episodes it averages (``[steps + 1, tasks]`` each).

    Every step samples fresh episodes with the current (per-task) weights, then adapts on them
    on ``config.device`` (the weights go to the sampler's CPU, the episodes to the device).
    """
    env = make_env(
        config.env.id,
        env_kwargs=config.env.kwargs,
        oracle=config.method == "oracle",
        normalize_actions=config.env.normalize_actions,
    )
    policy, acting = device_policies(config, env)
    device = resolve_device(config.device)
    current = {k: v.unsqueeze(0).expand(len(tasks), *v.shape).clone() for k, v in params.items()}
    current = to_device(current, device)
    generator = torch.Generator().manual_seed(seed)
    seeds = np.random.SeedSequence([EVAL_STREAM, seed]).generate_state(eval_cfg.max_steps + 1)
    step_fn = _steps_batch_step if eval_cfg.batch == "steps" else _episodes_batch_step
    returns, episodes = [], []
    for step, lr in enumerate([*step_lrs(eval_cfg, config.inner.lr), None]):
        test = TestStep(sampler, acting, tasks, generator, int(seeds[step]))
        batches = step_fn(test, current)
        returns.append(np.array([b.returns.double().mean().item() for b in batches]))
        episodes.append(np.array([b.episodes_per_task for b in batches]))
        if lr is not None:
            current = adapt_each(config, policy, current, batches, lr)
    return AdaptationCurve(np.stack(returns), np.stack(episodes))


class AdaptationCurve(NamedTuple):
    """An RL run's test: per step (rows) and task (columns), the mean return of the task's
    batch and the number of episodes in it."""

    returns: np.ndarray
    episodes: np.ndarray


@dataclasses.dataclass(frozen=True)
class TestStep:
    """What one test step samples with: the sampler, the policy it acts with, the tasks and
    the step's randomness."""

    sampler: EpisodeSampler
    acting: Policy
    tasks: Sequence[Any]
    generator: torch.Generator
    seed: int


def _episodes_batch_step(test: TestStep, current: Params) -> list[EpisodeBatch]:
    """``eval.batch: episodes``: one sampler call with the per-task weights ``current``, one
    episode per sub-env."""
    batch = test.sampler.sample(
        test.acting, to_cpu(current), test.tasks, generator=test.generator, seed=test.seed,
        per_task_params=True,
    )  # fmt: skip
    return [batch.task(k) for k in range(len(test.tasks))]


def _steps_batch_step(test: TestStep, current: Params) -> list[EpisodeBatch]:
    """``eval.batch: steps``: each task's batch of a fixed number of env steps
    (:func:`sample_step_budget`), a different number of episodes per task."""
    batches = sample_step_budget(
        test.sampler, test.acting, to_cpu(current), test.tasks, generator=test.generator,
        seed=test.seed, per_task_params=True,
    )  # fmt: skip
    log.info(
        "%.1f episodes per task in batches of %d env steps",
        np.mean([b.episodes_per_task for b in batches]),
        test.sampler.episodes_per_task * test.sampler.horizon,
    )
    return batches


def adapt_each(
    config: RLConfig, policy: Policy, params: Params, batches: Sequence[EpisodeBatch], lr: float
) -> Params:
    """One VPG step of ``lr`` per task from per-task weights ``[K, ...]``, each on its own
    one-task batch (batches may differ in size), on the weights' device."""
    device = _device_of(params)
    parts = []
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        one = {k: v[i : i + 1] for k, v in params.items()}
        parts.append(adapt_step(policy, one, batch, advantages_of(config, batch), lr))
    return {k: torch.cat([p[k] for p in parts]) for k in params}


def _device_of(params: Params) -> torch.device:
    return next(iter(params.values())).device


def evaluate_rl(
    runs: Sequence[tuple[RLConfig, Params]], eval_cfg: RLEvalConfig
) -> list[dict[str, Any]]:
    """Adaptation-curve rows (``mean_return``, ``ci95_return``) of every run on the same
    held-out tasks, drawn from the first run's env with ``eval_cfg.seed``, with the same
    episodes per step and number of steps; each run is fine-tuned with its own config's
    ``eval.lr`` (the paper's test scripts used a rate per method). An ``oracle`` run is scored
    without adaptation (step 0 only: the paper's horizontal line)."""
    base = runs[0][0]
    env = make_env(base.env.id, env_kwargs=base.env.kwargs)
    tasks = task_env(env, base.env.id).sample_tasks(eval_cfg.num_tasks, eval_rng(eval_cfg.seed))
    rows: list[dict[str, Any]] = []
    samplers: dict[tuple[bool, bool], EpisodeSampler] = {}
    try:
        for config, params in runs:
            if config.env.id != base.env.id:
                raise ValueError(f"cannot compare runs on {config.env.id!r} and {base.env.id!r}")
            if config.env.kwargs != base.env.kwargs:
                raise ValueError(
                    f"cannot compare runs on {base.env.id!r} made with different env.kwargs: "
                    f"{config.env.kwargs} and {base.env.kwargs}"
                )
            oracle = config.method == "oracle"
            key = (oracle, config.env.normalize_actions)
            if key not in samplers:
                samplers[key] = make_sampler(
                    base.sampler, env_id=base.env.id, env_kwargs=base.env.kwargs,
                    num_tasks=eval_cfg.num_tasks,
                    episodes_per_task=eval_cfg.episodes_per_task, horizon=base.env.horizon,
                    oracle=oracle, normalize_actions=config.env.normalize_actions,
                )  # fmt: skip
            run_cfg = dataclasses.replace(
                eval_cfg, lr=config.eval.lr, max_steps=0 if oracle else eval_cfg.max_steps
            )
            curve = adaptation_returns(
                config, params, tasks, samplers[key], run_cfg, seed=eval_cfg.seed
            )
            run_rows = curve_rows(curve.returns, metric="return", method=config.method)
            for row, episodes in zip(run_rows, curve.episodes, strict=True):
                row["episodes_per_task"] = float(episodes.mean())
            rows += run_rows
    finally:
        for sampler in samplers.values():
            sampler.close()
    return rows
