"""MAML-TRPO: the meta-surrogate, the meta-KL, their derivatives and the outer TRPO step
(Finn et al. 2017, sec. 3.2).

For task ``i`` with train episodes ``D_i`` and valid episodes ``D'_i`` (sampled with the adapted
weights ``theta_i_old = adapt(theta_old, D_i)``):

- inner loss (REINFORCE with baseline):
  ``L_i(theta) = -sum_{masked t,n} log pi_theta(a|s) A / #masked``, minimised by ``adapt``
  (:func:`metarl.rl.losses.vpg_loss`);
- meta-surrogate: ``theta_i = adapt(theta, L_i)`` then the TRPO surrogate on ``D'_i``:
  ``S(theta) = mean_i [ -mean_{masked} exp(log pi_{theta_i}(a|s) - log pi_old(a|s)) A' ]``;
- meta-KL: ``mean_i mean_{masked} KL(pi_{theta_i_old}(.|s) || pi_{theta_i}(.|s))`` on ``D'_i``.

Everything is computed for all tasks at once with ``torch.func.vmap`` over the task axis of
contiguous per-task rows (:class:`TaskRows`), through :func:`metarl.adaptation.adapt` and the
policy's :meth:`~metarl.rl.policies.Policy.dist_stats` alone, so it holds for any policy network.
The meta-gradient flows through the inner steps (second order) or not (``first_order=True``).
With several inner steps, every step re-uses the same train episodes and the same advantages
with the plain (not importance-weighted) VPG loss.

The outer TRPO step (:func:`meta_trpo_step`) takes its derivatives from :class:`MetaObjective`:
the adaptation the learner sampled the valid episodes with is kept with its pull-back
(:func:`adapt_meta_batch`, ``torch.func.vjp``), so the meta-gradient at the old weights adapts
nothing again; finite-difference products re-adapt at ``theta +- eps v``; exact ones
double-backprop the meta-KL; Gauss-Newton ones are ``J^T F J v`` by ``torch.func`` jvp/vjp.
For the default MLP, :mod:`metarl.rl.mlp_accelerator` computes the meta-KL gradients, the
Gauss-Newton products (and with them the meta-gradient) by hand (``trpo.accelerator``), where
that is measured to pay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from metarl.adaptation import adapt
from metarl.config import InnerLoopConfig, TRPOConfig
from metarl.rl.episodes import EpisodeBatch, episode_columns
from metarl.rl.losses import (
    StepData,
    TaskRows,
    masked_mean,
    surrogate_from_stats,
    task_rows,
    vpg_loss,
)
from metarl.rl.mlp_accelerator import MLPAccelerator, accelerate
from metarl.rl.policies import DistStats, Params, Policy
from metarl.rl.trpo import (
    Derivatives,
    TRPOStats,
    flat_grad,
    flatten_params,
    trpo_step,
    unflatten_params,
)


def adapt_policy(
    policy: Policy,
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


def _vpg_on(policy: Policy, episodes: StepData, advantages: Tensor, params: Params) -> Tensor:
    return vpg_loss(policy, params, episodes, advantages)


@dataclass(frozen=True)
class MetaBatch:
    """One meta-batch: train episodes (to adapt on) and valid episodes (sampled with the
    adapted weights), their ``[T, N]`` advantages, and the inner-loop settings (the config's
    :class:`~metarl.config.InnerLoopConfig` itself; at least one step)."""

    train: EpisodeBatch
    train_advantages: Tensor
    valid: EpisodeBatch
    valid_advantages: Tensor
    inner: InnerLoopConfig = field(default_factory=InnerLoopConfig)

    def __post_init__(self) -> None:
        if self.inner.steps < 1:
            raise ValueError(f"MetaBatch: inner.steps must be >= 1, got {self.inner.steps}")
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

    def first_valid_episodes(self, e: int) -> MetaBatch:
        """The meta-batch with every task's first ``e`` valid episodes (and their advantages)
        and all its train episodes."""
        cols = episode_columns(self.num_tasks, self.valid.episodes_per_task, e)
        return dataclasses.replace(
            self,
            valid=self.valid.first_episodes(e),
            valid_advantages=self.valid_advantages[:, cols],
        )

    def train_rows(self) -> TaskRows:
        return task_rows(self.train, self.train_advantages)

    def valid_rows(self) -> TaskRows:
        return task_rows(self.valid, self.valid_advantages)


# ------------------------------------------------------------------ per-task pieces (vmapped)


def _adapt_rows(policy: Policy, inner: InnerLoopConfig, theta: Params, rows: TaskRows) -> Params:
    return adapt_policy(
        policy, theta, rows, rows.advantages,
        steps=inner.steps, lr=inner.lr, first_order=inner.first_order,
    )  # fmt: skip


def adapt_all(
    policy: Policy,
    inner: InnerLoopConfig,
    train: TaskRows,
    theta: Params,
    *,
    per_task: bool = False,
) -> Params:
    """Every task's adapted weights ``[K, ...]`` from ``theta`` (or, ``per_task``, from its
    own copy ``theta[k]``), differentiable."""
    fn = torch.func.vmap(partial(_adapt_rows, policy, inner), in_dims=(0 if per_task else None, 0))
    adapted: Params = fn(theta, train)
    return adapted


def valid_stats(policy: Policy, adapted: Params, valid: TaskRows) -> DistStats:
    """The adapted policies' statistics on the valid observations, ``[K, R, ...]``."""
    stats: DistStats = torch.func.vmap(policy.dist_stats)(adapted, valid.observations)
    return stats


def _task_kl(policy: Policy, stats: DistStats, rows: TaskRows, old: DistStats) -> Tensor:
    return masked_mean(policy.kl_from_stats(old, stats), rows.mask)


def _task_surrogate(policy: Policy, stats: DistStats, rows: TaskRows) -> Tensor:
    return surrogate_from_stats(policy, stats, rows, rows.advantages)


def surrogate_of(policy: Policy, stats: DistStats, valid: TaskRows) -> Tensor:
    """Mean over tasks of the TRPO surrogate of ``stats`` ``[K, R, ...]`` on ``valid``."""
    losses: Tensor = torch.func.vmap(partial(_task_surrogate, policy))(stats, valid)
    return losses.mean()


def kl_of(policy: Policy, stats: DistStats, valid: TaskRows, old: DistStats) -> Tensor:
    """Mean over tasks of the masked mean ``KL(old || stats)`` on ``valid``."""
    kls: Tensor = torch.func.vmap(partial(_task_kl, policy))(stats, valid, old)
    return kls.mean()


def adapt_tasks(
    policy: Policy,
    params: Params,
    episodes: EpisodeBatch,
    advantages: Tensor,
    inner: InnerLoopConfig,
) -> Params:
    """Adapted weights of every task, stacked on a leading task axis ``[K, ...]`` and detached
    (for the sampler to collect the valid episodes with, see ``Policy.sample_per_task``)."""
    adapted = adapt_all(policy, inner, task_rows(episodes, advantages), params)
    return {name: p.detach() for name, p in adapted.items()}


@dataclass(frozen=True)
class TaskAdaptation:
    """Every task's adapted weights from ``theta`` (``params``, ``[K, ...]``, detached: what
    the sampler collects the valid episodes with) and the adaptation's pull-back ``pull``:
    per-task cotangents ``z_k`` of the adapted weights to ``J_k^T z_k`` (``[K, ...]``, ``J_k``
    the Jacobian of task ``k``'s adaptation at ``theta``; the identity when first order), so
    that the outer step at ``theta`` adapts nothing again."""

    theta: Params
    train: EpisodeBatch
    inner: InnerLoopConfig
    rows: TaskRows
    params: Params
    pull: Callable[[Params], Params]

    def expand(self, x: Params) -> Params:
        """``x`` (shaped like ``theta``) repeated for every task, ``[K, ...]`` (contiguous:
        forward-mode tangents need their own memory)."""
        k = self.train.num_tasks
        return {name: v.expand(k, *v.shape).contiguous() for name, v in x.items()}


def adapt_meta_batch(
    policy: Policy, theta: Params, train: EpisodeBatch, advantages: Tensor, inner: InnerLoopConfig
) -> TaskAdaptation:
    """Adapt ``theta`` to every task of ``train``, keeping the pull-back (``torch.func.vjp``:
    the inner steps' graph) for :class:`MetaObjective`."""
    rows = task_rows(train, advantages)
    theta = {k: v.detach() for k, v in theta.items()}
    k = train.num_tasks
    expanded = {name: v.expand(k, *v.shape) for name, v in theta.items()}
    fn = partial(adapt_all, policy, inner, rows, per_task=True)
    result = torch.func.vjp(fn, expanded)
    adapted, vjp_fn = result[0], result[1]

    def pull(cotangents: Params) -> Params:
        pulled: Params = vjp_fn(cotangents)[0]
        return pulled

    params = {name: p.detach() for name, p in adapted.items()}
    return TaskAdaptation(theta, train, inner, rows, params, pull)


# ------------------------------------------------------------------ the objectives


def meta_surrogate(policy: Policy, params: Params, batch: MetaBatch) -> Tensor:
    """The meta-objective ``S(theta)`` (mean over tasks of the adapted TRPO surrogate)."""
    valid = batch.valid_rows()
    adapted = adapt_all(policy, batch.inner, batch.train_rows(), params)
    return surrogate_of(policy, valid_stats(policy, adapted, valid), valid)


def adapted_stats(policy: Policy, params: Params, batch: MetaBatch) -> DistStats:
    """Detached distribution statistics of the adapted policies on the valid observations,
    ``[K, R, ...]`` (rows as :class:`TaskRows`): the 'old' policy of :func:`meta_kl` when
    ``params`` are the weights the valid episodes were collected with."""
    with torch.no_grad():
        adapted = adapt_all(policy, batch.inner, batch.train_rows(), params)
        stats = valid_stats(policy, adapted, batch.valid_rows())
    return {k: v.detach() for k, v in stats.items()}


def meta_kl(policy: Policy, params: Params, batch: MetaBatch, old_stats: DistStats) -> Tensor:
    """Mean over tasks of the masked mean ``KL(old adapted || adapted at params)`` on the valid
    observations; ``old_stats`` from :func:`adapted_stats`."""
    valid = batch.valid_rows()
    adapted = adapt_all(policy, batch.inner, batch.train_rows(), params)
    return kl_of(policy, valid_stats(policy, adapted, valid), valid, old_stats)


def meta_surrogate_and_kl(
    policy: Policy, params: Params, batch: MetaBatch, old_stats: DistStats
) -> tuple[Tensor, Tensor]:
    """``(meta_surrogate, meta_kl)`` from a single adaptation per task (for the line search)."""
    valid = batch.valid_rows()
    adapted = adapt_all(policy, batch.inner, batch.train_rows(), params)
    stats = valid_stats(policy, adapted, valid)
    return surrogate_of(policy, stats, valid), kl_of(policy, stats, valid, old_stats)


class MetaObjective:
    """The meta-surrogate and meta-KL of one meta-batch and their derivatives, by
    ``torch.func`` for any policy, with ``theta_old = adaptation.theta`` the weights the valid
    episodes were collected with (its adapted policies are the KL's 'old' ones).

    The gradient at ``theta_old`` pulls the valid surrogate's gradient back through the kept
    adaptation; elsewhere (finite differences, the line search) every task is adapted again.
    :meth:`gauss_newton_hvp` is ``J^T F J v`` at ``theta_old``: ``J`` maps the meta-weights to
    the adapted networks' outputs on the valid observations and the adapted weights the head
    reads (through the inner steps), ``F`` is the meta-KL's Hessian in those at the old
    policies (their Fisher information, masked and averaged like the meta-KL). At
    ``theta_old`` the KL's gradient in them vanishes, so this *is* the meta-KL's Hessian there
    (not elsewhere). One
    inner step (or first order) makes each task's ``J_k = I - lr H_k`` symmetric, so ``J v``
    is the kept pull-back too; more steps push ``v`` forward with ``torch.func.jvp``.
    """

    def __init__(self, policy: Policy, batch: MetaBatch, adaptation: TaskAdaptation) -> None:
        if not (adaptation.train is batch.train and adaptation.inner == batch.inner):
            raise ValueError(
                "MetaObjective: the adaptation must come from adapt_meta_batch on this batch's "
                "train episodes with its inner-loop settings"
            )
        self.policy, self.inner, self.adaptation = policy, batch.inner, adaptation
        self.theta_old = adaptation.theta
        self.valid = batch.valid_rows()
        with torch.no_grad():
            stats = valid_stats(policy, adaptation.params, self.valid)
        self.old_stats: DistStats = {k: v.detach() for k, v in stats.items()}
        self._net: tuple[Tensor, Callable[[Tensor], tuple[Params]]] | None = None

    def _adapted(self, theta: Params) -> Params:
        return adapt_all(self.policy, self.inner, self.adaptation.rows, theta)

    def _surrogate(self, adapted: Params) -> Tensor:
        return surrogate_of(self.policy, valid_stats(self.policy, adapted, self.valid), self.valid)

    def _kl(self, adapted: Params) -> Tensor:
        stats = valid_stats(self.policy, adapted, self.valid)
        return kl_of(self.policy, stats, self.valid, self.old_stats)

    def loss(self, theta: Params) -> Tensor:
        """The meta-surrogate at ``theta`` (differentiable)."""
        return self._surrogate(self._adapted(theta))

    def kl(self, theta: Params) -> Tensor:
        """The meta-KL at ``theta`` (differentiable: exact products double-backprop it)."""
        return self._kl(self._adapted(theta))

    def loss_and_kl(self, theta: Params) -> tuple[Tensor, Tensor]:
        """``(meta_surrogate, meta_kl)`` at ``theta`` from one adaptation (the line search)."""
        with torch.no_grad():
            stats = valid_stats(self.policy, self._adapted(theta), self.valid)
            loss = surrogate_of(self.policy, stats, self.valid)
            return loss, kl_of(self.policy, stats, self.valid, self.old_stats)

    def loss_and_grad(self, theta: Params) -> tuple[Tensor, Tensor]:
        """``(meta_surrogate, its flat gradient)`` at ``theta``."""
        if theta is self.theta_old:
            grads, value = torch.func.grad_and_value(self._surrogate)(self.adaptation.params)
            return value.detach(), self._pull_sum(grads)
        value, grad = flat_grad(self.loss, theta)  # autograd: 1.2x torch.func.grad's speed here
        return value.detach(), grad

    def kl_grad(self, theta: Params) -> Tensor:
        """Flat gradient of the meta-KL at ``theta``, re-adapting from the same episodes."""
        return flat_grad(self.kl, theta)[1]

    def gauss_newton_hvp(self, v: Tensor) -> Tensor:
        """``J^T F J v`` at ``theta_old`` (see the class docstring), without damping."""
        adaptation = self.adaptation
        tangent = adaptation.expand(unflatten_params(v, self.theta_old))
        if self.inner.first_order or self.inner.steps == 1:
            pushed = adaptation.pull(tangent)  # J_k v = J_k^T v
        else:
            fn = partial(adapt_all, self.policy, self.inner, adaptation.rows, per_task=True)
            pushed = torch.func.jvp(fn, (adaptation.expand(self.theta_old),), (tangent,))[1]
        net = self._network_outputs
        if self._net is None:  # the outputs at the old policies, and their pull-back
            result = torch.func.vjp(net, adaptation.params)
            self._net = (result[0], result[1])
        out, net_vjp = self._net
        out_t = torch.func.jvp(net, (adaptation.params,), (pushed,))[1]
        hessian = torch.func.jvp(
            torch.func.grad(self._kl_of_outputs, argnums=(0, 1)),
            (out, adaptation.params), (out_t, pushed),
        )[1]  # fmt: skip
        from_out: Params = net_vjp(hessian[0])[0]
        return self._pull_sum({k: from_out[k] + hessian[1][k] for k in from_out})

    def _network_outputs(self, adapted: Params) -> Tensor:
        """The adapted networks' outputs on the valid observations, ``[K, R, out_dim]``."""
        out: Tensor = torch.func.vmap(self.policy.network_output)(adapted, self.valid.observations)
        return out

    def _kl_of_outputs(self, out: Tensor, adapted: Params) -> Tensor:
        """The meta-KL as a function of the network outputs and (through the head) the
        weights: minimal, with zero gradient, at the old policies' (unlike, say, a
        categorical's log-probabilities, in which the KL is linear)."""
        stats = torch.func.vmap(self.policy.head.stats)(adapted, out)
        return kl_of(self.policy, stats, self.valid, self.old_stats)

    def _pull_sum(self, cotangents: Params) -> Tensor:
        """Flat ``sum_k J_k^T z_k`` for cotangents ``z_k`` of the adapted weights."""
        pulled = self.adaptation.pull(cotangents)
        return flatten_params({k: pulled[k].sum(0) for k in self.theta_old}).detach()


def curvature_episodes(fraction: float, episodes_per_task: int) -> int:
    """How many of a task's ``episodes_per_task`` episodes a curvature share ``fraction``
    (``trpo.hvp_subsample``) keeps: at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"hvp_subsample must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * episodes_per_task - 1e-9))


def meta_trpo_step(
    policy: Policy,
    params: Params,
    batch: MetaBatch,
    config: TRPOConfig | None = None,
    *,
    adaptation: TaskAdaptation | None = None,
) -> tuple[Params, TRPOStats]:
    """One outer TRPO step on the meta-surrogate, with the meta-KL as the constraint.

    ``params`` must be the meta-weights the valid episodes were collected with (after
    adaptation), so that the old adapted policy is the sampling one; ``adaptation`` (from
    :func:`adapt_meta_batch` at ``params`` on ``batch.train``) is re-used when given. With
    ``config.hvp_subsample < 1`` the products take the meta-KL on every task's first share of
    its valid episodes, each task still adapted on all its train episodes: adapting on a share
    of those too (as the option first did) makes the curvature that of other adapted policies,
    and at inner lr 0.5 on Navigation2D it ruined training (-43.6 / -14.2 / -8.3 / -8.1 after
    100 iterations and 0..3 test steps at 0.1, against -37.3 / -9.8 / -4.7 / -4.2 on all
    episodes). The exact adaptation is most of the products' cost, so the share saves little
    (see ``TRPOConfig.hvp_subsample``).
    """
    config = config or TRPOConfig()
    if adaptation is None:
        adaptation = adapt_meta_batch(
            policy, params, batch.train, batch.train_advantages, batch.inner
        )
    elif adaptation.theta.keys() != params.keys() or any(
        not torch.equal(adaptation.theta[k], params[k]) for k in params
    ):
        raise ValueError("meta_trpo_step: the adaptation must come from adapt_meta_batch at params")
    full = MetaObjective(policy, batch, adaptation)
    e = curvature_episodes(config.hvp_subsample, batch.valid.episodes_per_task)
    sub = batch.valid.episodes_per_task > e
    curv = MetaObjective(policy, batch.first_valid_episodes(e), adaptation) if sub else full
    return trpo_step(
        adaptation.theta, full.loss, full.kl, config, loss_kl_fn=full.loss_and_kl,
        derivatives=_derivatives(policy, full, curv, config),
        curvature_kl_fn=curv.kl if sub else None,
    )  # fmt: skip


def _derivatives(
    policy: Policy, full: MetaObjective, curvature: MetaObjective, config: TRPOConfig
) -> Derivatives:
    """The meta-gradient from ``full``, the products' routines from ``curvature``; by the
    accelerator where it applies (with Gauss-Newton products on all valid episodes, the
    meta-gradient too: it re-uses their passes at theta_old)."""
    fast = _accelerator(policy, curvature, config)
    by_hand = fast is not None and config.hvp == "gauss_newton" and curvature is full
    return Derivatives(
        loss_grad=fast.loss_and_grad if fast is not None and by_hand else full.loss_and_grad,
        kl_grad=(fast or curvature).kl_grad,
        gauss_newton=(fast or curvature).gauss_newton_hvp,
    )


def _accelerator(
    policy: Policy, curvature: MetaObjective, config: TRPOConfig
) -> MLPAccelerator | None:
    """The hand-derived KL gradients and Gauss-Newton products of
    :mod:`metarl.rl.mlp_accelerator` when ``config.accelerator`` is on, the products need them
    (finite differences or Gauss-Newton) and the policy is the default MLP; else None."""
    if not config.accelerator or config.hvp == "exact":
        return None
    return accelerate(policy, curvature)
