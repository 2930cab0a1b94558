"""The per-step losses of policy-gradient RL on episode batches (or one task's rows of them).

- :func:`compute_advantages`: GAE with the per-task linear feature baseline, normalised per task;
- :func:`vpg_loss`: REINFORCE ``-sum_{masked t,n} log pi(a|s) A / #masked`` (the inner loss);
- :func:`surrogate_loss`: TRPO's ``-mean_{masked} exp(log pi(a|s) - log pi_old(a|s)) A``;
- :class:`TaskRows`: a batch's steps as contiguous per-task rows, the layout the meta-objectives
  (:mod:`metarl.rl.maml_trpo`) ``vmap`` these losses over.

Padded steps (``mask == 0``) never count, even where they hold NaN.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from metarl.rl.baselines import fit_linear_baseline
from metarl.rl.episodes import EpisodeBatch, gae, merge_tasks, split_tasks
from metarl.rl.policies import DistStats, Params, Policy


class StepData(Protocol):
    """Anything with per-step ``observations``, ``actions``, ``mask`` and sampling
    ``log_probs`` (an :class:`EpisodeBatch`, one task's slice of its ``by_task()``, or one
    task's :class:`TaskRows`)."""

    @property
    def observations(self) -> Tensor: ...
    @property
    def actions(self) -> Tensor: ...
    @property
    def mask(self) -> Tensor: ...
    @property
    def log_probs(self) -> Tensor: ...


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """``sum_{mask > 0} x / sum(mask)`` over all dims (padded entries never leak, even if NaN)."""
    return torch.where(mask > 0, x, torch.zeros_like(x)).sum() / mask.sum()


def normalize_advantages(
    advantages: Tensor, mask: Tensor, num_tasks: int, eps: float = 1e-8
) -> Tensor:
    """Per task, shift and scale ``[T, N]`` advantages to mean 0 and std 1 over masked steps
    (``(A - mean) / (std + eps)``, population std, as rllab's ``center_adv``); 0 on padding."""
    a, m = split_tasks(advantages, num_tasks), split_tasks(mask, num_tasks)
    count = m.sum(dim=(1, 2), keepdim=True)
    mean = (a * m).sum(dim=(1, 2), keepdim=True) / count
    var = (((a - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return merge_tasks((a - mean) / (var.sqrt() + eps) * m)


def compute_advantages(
    episodes: EpisodeBatch,
    *,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    normalize: bool = True,
    bootstrap_truncated: bool = True,
) -> Tensor:
    """``[T, N]`` GAE advantages with the per-task linear feature baseline (no gradient),
    optionally normalised per task (the paper's code does, and uses ``gae_lambda = 1``).

    ``bootstrap_truncated``: an episode cut by the time limit continues with the baseline's
    value of its last observation; otherwise every episode ends with value 0 (the paper's
    code, which appends 0 to every path's baseline)."""
    with torch.no_grad():
        base = fit_linear_baseline(episodes, gamma)
        ends = episodes.terminated
        if not bootstrap_truncated:
            ends = torch.ones_like(ends)
        adv = gae(
            episodes.rewards, base.values, episodes.mask, gamma=gamma, lam=gae_lambda,
            last_values=base.last_values, terminated=ends,
        )  # fmt: skip
        return normalize_advantages(adv, episodes.mask, episodes.num_tasks) if normalize else adv


def vpg_loss(policy: Policy, params: Params, episodes: StepData, advantages: Tensor) -> Tensor:
    """REINFORCE loss ``-sum_{masked} log pi(a|s) A / #masked`` (advantages are constants)."""
    log_probs = policy.log_prob(params, episodes.observations, episodes.actions)
    return -masked_mean(log_probs * advantages, episodes.mask)


def task_mean_vpg_loss(
    policy: Policy, params: Params, episodes: EpisodeBatch, advantages: Tensor
) -> Tensor:
    """REINFORCE loss averaged per task, then over tasks: ``-mean_k mean_{masked, task k}
    log pi(a|s) A`` (the paper's multi-task loss; :func:`vpg_loss` when every task has as many
    real steps)."""
    log_probs = policy.log_prob(params, episodes.observations, episodes.actions)
    k = episodes.num_tasks
    terms = torch.where(episodes.mask > 0, log_probs * advantages, torch.zeros_like(log_probs))
    per_task = split_tasks(terms, k).sum(dim=(1, 2)) / split_tasks(episodes.mask, k).sum(dim=(1, 2))
    return -per_task.mean()


def surrogate_loss(
    policy: Policy, params: Params, episodes: StepData, advantages: Tensor
) -> Tensor:
    """TRPO surrogate ``-mean_{masked} exp(log pi(a|s) - log pi_old(a|s)) A``, where
    ``log pi_old`` is the sampling policy's ``episodes.log_probs``."""
    stats = policy.dist_stats(params, episodes.observations)
    return surrogate_from_stats(policy, stats, episodes, advantages)


def surrogate_from_stats(
    policy: Policy, stats: DistStats, episodes: StepData, advantages: Tensor
) -> Tensor:
    """:func:`surrogate_loss` of the new policy's statistics ``stats`` on ``episodes``."""
    log_probs = policy.log_prob_from_stats(stats, episodes.actions)
    return -masked_mean(importance_ratio(log_probs, episodes) * advantages, episodes.mask)


def importance_ratio(log_probs: Tensor, episodes: StepData) -> Tensor:
    """``exp(log pi(a|s) - log pi_old(a|s))``, with the log-ratio zeroed on padded steps first
    (so padding can neither overflow nor send NaN gradients back)."""
    log_ratio = log_probs - episodes.log_probs
    return torch.exp(torch.where(episodes.mask > 0, log_ratio, torch.zeros_like(log_ratio)))


class TaskRows(NamedTuple):
    """One side of a meta-batch as per-task rows ``[K, R, ...]``: each task's real steps, in
    their time-major order, then padding rows (mask 0) up to ``R``, the most real steps of any
    task (a pytree for ``vmap``; under it, one task's rows satisfy :class:`StepData`)."""

    observations: Tensor
    actions: Tensor
    mask: Tensor
    log_probs: Tensor
    advantages: Tensor


def task_rows(episodes: EpisodeBatch, advantages: Tensor) -> TaskRows:
    """The real steps of ``episodes`` and their ``[T, N]`` advantages as :class:`TaskRows`.

    Padded positions of the ``[T, N]`` layout (steps after an episode's end, empty columns)
    are dropped, so every loss and curvature product computed on the rows costs what the
    batch's real steps cost, however unequal its episodes' lengths and counts (with the
    paper's training batch a task whose episodes end early gets more, shorter ones). Every
    loss is a masked mean over a task's rows, which the order of its rows does not change
    beyond rounding.
    """
    k = episodes.num_tasks

    def flat(x: Tensor) -> Tensor:
        per_task = split_tasks(x, k)
        return per_task.reshape(k, -1, *per_task.shape[3:])

    index = real_first(flat(episodes.mask))

    def rows(x: Tensor) -> Tensor:
        f = flat(x)
        idx = index.reshape(*index.shape, *(1,) * (f.dim() - 2)).expand(-1, -1, *f.shape[2:])
        return torch.gather(f, 1, idx)

    return TaskRows(
        rows(episodes.observations), rows(episodes.actions), rows(episodes.mask),
        rows(episodes.log_probs), rows(advantages),
    )  # fmt: skip


def real_first(mask: Tensor) -> Tensor:
    """``[K, R]`` row indices into ``mask [K, M]``: each task's real rows (``mask > 0``) in
    order, then its padded ones, with ``R`` the largest number of real rows of a task (at
    least 1). On the meta device (no data) every row is kept, in order."""
    if mask.device.type == "meta":
        return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    padded = (mask <= 0).to(torch.int32)
    width = max(1, int((mask > 0).sum(dim=1).max()))
    return torch.sort(padded, dim=1, stable=True).indices[:, :width]
