"""MAML for RL: the VPG inner loss, the meta-surrogate and the meta-KL (Finn et al. 2017, sec. 3.2).

For task ``i`` with train episodes ``D_i`` and valid episodes ``D'_i`` (sampled with the adapted
weights ``theta_i_old = adapt(theta_old, D_i)``):

- inner loss (REINFORCE with baseline):
  ``L_i(theta) = -sum_{masked t,n} log pi_theta(a|s) A / #masked``, minimised by ``adapt``;
- meta-surrogate: ``theta_i = adapt(theta, L_i)`` then the TRPO surrogate on ``D'_i``:
  ``S(theta) = mean_i [ -mean_{masked} exp(log pi_{theta_i}(a|s) - log pi_old(a|s)) A' ]``;
- meta-KL: ``mean_i mean_{masked} KL(pi_{theta_i_old}(.|s) || pi_{theta_i}(.|s))`` on ``D'_i``.

Both are computed for all tasks at once with ``torch.func.vmap`` over the task axis of
:meth:`EpisodeBatch.by_task`; the meta-gradient flows through the inner steps (second order) or
not (``first_order=True``). With several inner steps, every step re-uses the same train
episodes and the same advantages with the plain (not importance-weighted) VPG loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from metarl.adaptation import adapt
from metarl.baselines import fit_linear_baseline
from metarl.episodes import EpisodeBatch, TaskEpisodes, gae, merge_tasks, split_tasks
from metarl.policies import DistStats, MLPPolicy, Params
from metarl.trpo import HVPMethod, TRPOStats, trpo_step


class StepData(Protocol):
    """Anything with per-step ``observations``, ``actions``, ``mask`` and sampling
    ``log_probs`` (an :class:`EpisodeBatch`, or one task's slice of :class:`TaskEpisodes`)."""

    @property
    def observations(self) -> Tensor: ...
    @property
    def actions(self) -> Tensor: ...
    @property
    def mask(self) -> Tensor: ...
    @property
    def log_probs(self) -> Tensor: ...


@dataclass(frozen=True)
class InnerLoop:
    """Settings of the inner (adaptation) loop."""

    steps: int = 1
    """Number of inner VPG steps, all on the same train episodes."""
    lr: float = 0.1
    """Inner learning rate alpha."""
    first_order: bool = False
    """Drop second-order terms of the meta-gradient (first-order MAML)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"InnerLoop: steps must be >= 1, got {self.steps}")
        if not self.lr > 0.0:
            raise ValueError(f"InnerLoop: lr must be > 0, got {self.lr}")


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
    episodes: EpisodeBatch, *, gamma: float = 0.99, gae_lambda: float = 1.0, normalize: bool = True
) -> Tensor:
    """``[T, N]`` GAE advantages with the per-task linear feature baseline (no gradient),
    optionally normalised per task (the paper's code does, and uses ``gae_lambda = 1``)."""
    with torch.no_grad():
        base = fit_linear_baseline(episodes, gamma)
        adv = gae(
            episodes.rewards, base.values, episodes.mask, gamma=gamma, lam=gae_lambda,
            last_values=base.last_values, terminated=episodes.terminated,
        )  # fmt: skip
        return normalize_advantages(adv, episodes.mask, episodes.num_tasks) if normalize else adv


def vpg_loss(policy: MLPPolicy, params: Params, episodes: StepData, advantages: Tensor) -> Tensor:
    """REINFORCE loss ``-sum_{masked} log pi(a|s) A / #masked`` (advantages are constants)."""
    log_probs = policy.log_prob(params, episodes.observations, episodes.actions)
    return -masked_mean(log_probs * advantages, episodes.mask)


def surrogate_loss(
    policy: MLPPolicy, params: Params, episodes: StepData, advantages: Tensor
) -> Tensor:
    """TRPO surrogate ``-mean_{masked} exp(log pi(a|s) - log pi_old(a|s)) A``, where
    ``log pi_old`` is the sampling policy's ``episodes.log_probs``."""
    log_probs = policy.log_prob(params, episodes.observations, episodes.actions)
    return -masked_mean(importance_ratio(log_probs, episodes) * advantages, episodes.mask)


def importance_ratio(log_probs: Tensor, episodes: StepData) -> Tensor:
    """``exp(log pi(a|s) - log pi_old(a|s))``, with the log-ratio zeroed on padded steps first
    (so padding can neither overflow nor send NaN gradients back)."""
    log_ratio = log_probs - episodes.log_probs
    return torch.exp(torch.where(episodes.mask > 0, log_ratio, torch.zeros_like(log_ratio)))


def adapt_policy(
    policy: MLPPolicy,
    params: Params,
    episodes: StepData,
    advantages: Tensor,
    *,
    steps: int = 1,
    lr: float = 0.1,
    first_order: bool = False,
) -> Params:
    """``theta_i``: ``steps`` VPG steps from ``params`` on one task's ``episodes`` (via
    :func:`metarl.adaptation.adapt`; differentiable w.r.t. ``params``)."""
    loss_fn = partial(_vpg_on, policy, episodes, advantages)
    return adapt(params, loss_fn, steps=steps, lr=lr, first_order=first_order)


def _vpg_on(policy: MLPPolicy, episodes: StepData, advantages: Tensor, params: Params) -> Tensor:
    return vpg_loss(policy, params, episodes, advantages)


@dataclass(frozen=True)
class MetaBatch:
    """One meta-batch: train episodes (to adapt on) and valid episodes (sampled with the
    adapted weights), their ``[T, N]`` advantages, and the inner-loop settings."""

    train: EpisodeBatch
    train_advantages: Tensor
    valid: EpisodeBatch
    valid_advantages: Tensor
    inner: InnerLoop = field(default_factory=InnerLoop)

    def __post_init__(self) -> None:
        if self.train.num_tasks != self.valid.num_tasks:
            raise ValueError(
                f"MetaBatch: train has {self.train.num_tasks} tasks, valid {self.valid.num_tasks}"
            )
        for name, adv, eps in (
            ("train", self.train_advantages, self.train),
            ("valid", self.valid_advantages, self.valid),
        ):
            if tuple(adv.shape) != tuple(eps.rewards.shape):
                raise ValueError(
                    f"MetaBatch: {name}_advantages must have shape {tuple(eps.rewards.shape)} "
                    f"(like {name}.rewards), got {tuple(adv.shape)}"
                )

    @property
    def num_tasks(self) -> int:
        """Number of tasks K."""
        return self.train.num_tasks

    def task_inputs(self) -> tuple[TaskEpisodes, Tensor, TaskEpisodes, Tensor]:
        """``(train, train_adv, valid, valid_adv)`` with a leading task axis, for ``vmap``."""
        k = self.num_tasks
        return (
            self.train.by_task(),
            split_tasks(self.train_advantages, k),
            self.valid.by_task(),
            split_tasks(self.valid_advantages, k),
        )


def _adapt_task(
    policy: MLPPolicy, inner: InnerLoop, params: Params, train: StepData, adv: Tensor
) -> Params:
    return adapt_policy(
        policy, params, train, adv, steps=inner.steps, lr=inner.lr, first_order=inner.first_order
    )


def adapt_tasks(
    policy: MLPPolicy, params: Params, episodes: EpisodeBatch, advantages: Tensor, inner: InnerLoop
) -> Params:
    """Adapted weights of every task, stacked on a leading task axis ``[K, ...]`` and detached
    (for the sampler to collect the valid episodes with, see ``MLPPolicy.sample_per_task``)."""
    fn = torch.func.vmap(partial(_adapt_task, policy, inner), in_dims=(None, 0, 0))
    adapted: Params = fn(params, episodes.by_task(), split_tasks(advantages, episodes.num_tasks))
    return {name: p.detach() for name, p in adapted.items()}


def _task_surrogate(
    policy: MLPPolicy, inner: InnerLoop, params: Params,
    train: StepData, train_adv: Tensor, valid: StepData, valid_adv: Tensor,
) -> Tensor:  # fmt: skip
    adapted = _adapt_task(policy, inner, params, train, train_adv)
    return surrogate_loss(policy, adapted, valid, valid_adv)


def meta_surrogate(policy: MLPPolicy, params: Params, batch: MetaBatch) -> Tensor:
    """The meta-objective ``S(theta)`` (mean over tasks of the adapted TRPO surrogate)."""
    fn = torch.func.vmap(partial(_task_surrogate, policy, batch.inner), in_dims=(None, 0, 0, 0, 0))
    losses: Tensor = fn(params, *batch.task_inputs())
    return losses.mean()


def _task_stats(
    policy: MLPPolicy,
    inner: InnerLoop,
    params: Params,
    train: StepData,
    train_adv: Tensor,
    valid: StepData,
) -> DistStats:
    adapted = _adapt_task(policy, inner, params, train, train_adv)
    return policy.dist_stats(adapted, valid.observations)


def adapted_stats(policy: MLPPolicy, params: Params, batch: MetaBatch) -> DistStats:
    """Detached distribution statistics of the adapted policies on the valid observations,
    ``[K, T, E, ...]``: the 'old' policy of :func:`meta_kl` when ``params`` are the weights the
    valid episodes were collected with."""
    train, train_adv, valid, _ = batch.task_inputs()
    fn = torch.func.vmap(partial(_task_stats, policy, batch.inner), in_dims=(None, 0, 0, 0))
    with torch.no_grad():
        stats: DistStats = fn(params, train, train_adv, valid)
    return {k: v.detach() for k, v in stats.items()}


def _task_loss_kl(
    policy: MLPPolicy, inner: InnerLoop, params: Params, train: StepData, train_adv: Tensor,
    valid: StepData, valid_adv: Tensor, old: DistStats,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    adapted = _adapt_task(policy, inner, params, train, train_adv)
    stats = policy.dist_stats(adapted, valid.observations)
    log_probs = policy.log_prob_from_stats(stats, valid.actions)
    loss = -masked_mean(importance_ratio(log_probs, valid) * valid_adv, valid.mask)
    kl = masked_mean(policy.kl_from_stats(old, stats), valid.mask)
    return loss, kl


def _task_kl(
    policy: MLPPolicy, inner: InnerLoop, params: Params, train: StepData, train_adv: Tensor,
    valid: StepData, old: DistStats,
) -> Tensor:  # fmt: skip
    adapted = _adapt_task(policy, inner, params, train, train_adv)
    return masked_mean(policy.kl(old, adapted, valid.observations), valid.mask)


def meta_kl(policy: MLPPolicy, params: Params, batch: MetaBatch, old_stats: DistStats) -> Tensor:
    """Mean over tasks of the masked mean ``KL(old adapted || adapted at params)`` on the valid
    observations; ``old_stats`` from :func:`adapted_stats`."""
    train, train_adv, valid, _ = batch.task_inputs()
    fn = torch.func.vmap(partial(_task_kl, policy, batch.inner), in_dims=(None, 0, 0, 0, 0))
    kls: Tensor = fn(params, train, train_adv, valid, old_stats)
    return kls.mean()


def meta_surrogate_and_kl(
    policy: MLPPolicy, params: Params, batch: MetaBatch, old_stats: DistStats
) -> tuple[Tensor, Tensor]:
    """``(meta_surrogate, meta_kl)`` from a single adaptation per task (for the line search)."""
    fn = torch.func.vmap(partial(_task_loss_kl, policy, batch.inner), in_dims=(None, 0, 0, 0, 0, 0))
    losses, kls = fn(params, *batch.task_inputs(), old_stats)
    return losses.mean(), kls.mean()


@dataclass(frozen=True)
class TRPOSettings:
    """Outer-loop TRPO settings (defaults from the MAML paper / rllab)."""

    max_kl: float = 0.01
    """Trust-region size: mean KL allowed per step."""
    damping: float = 1e-5
    """Added to the Hessian-vector product (``H + damping I``)."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    hvp: HVPMethod = "finite_difference"
    """How Hessian-vector products are computed: ``finite_difference`` (paper) or ``exact``."""
    fd_base_eps: float = 1e-5
    """Finite-difference scale; ``eps = fd_base_eps / |theta|``."""
    backtrack_ratio: float = 0.8
    """Line-search shrink factor."""
    max_backtracks: int = 15
    """Line-search tries."""


def meta_trpo_step(
    policy: MLPPolicy, params: Params, batch: MetaBatch, settings: TRPOSettings | None = None
) -> tuple[Params, TRPOStats]:
    """One outer TRPO step on the meta-surrogate, with the meta-KL as the constraint.

    ``params`` must be the meta-weights the valid episodes were collected with (after
    adaptation), so that the old adapted policy is the sampling one.
    """
    s = settings or TRPOSettings()
    old = adapted_stats(policy, params, batch)
    return trpo_step(
        params,
        partial(meta_surrogate, policy, batch=batch),
        partial(_meta_kl_at, policy, batch, old),
        max_kl=s.max_kl, damping=s.damping, cg_iters=s.cg_iters, hvp=s.hvp,
        fd_base_eps=s.fd_base_eps, backtrack_ratio=s.backtrack_ratio,
        max_backtracks=s.max_backtracks,
        loss_kl_fn=partial(_loss_kl_at, policy, batch, old),
    )  # fmt: skip


def _meta_kl_at(policy: MLPPolicy, batch: MetaBatch, old: DistStats, params: Params) -> Tensor:
    return meta_kl(policy, params, batch, old)


def _loss_kl_at(
    policy: MLPPolicy, batch: MetaBatch, old: DistStats, params: Params
) -> tuple[Tensor, Tensor]:
    return meta_surrogate_and_kl(policy, params, batch, old)
