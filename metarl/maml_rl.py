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

Those autograd functions are the reference. The outer TRPO step (:func:`meta_trpo_step`) gets
the same quantities several times faster from :class:`MetaDerivatives`: batched matrix products
over contiguous per-task rows with hand-written forward, backward and R-operator passes of the
MLP (:class:`metarl.policies.MLPPolicy`), and, for ``hvp="gauss_newton"``, Hessian-vector
products ``J^T F J v`` that need no re-adaptation (exact at the old weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from metarl.adaptation import adapt
from metarl.baselines import fit_linear_baseline
from metarl.episodes import (
    EpisodeBatch,
    TaskEpisodes,
    episode_columns,
    gae,
    merge_tasks,
    split_tasks,
)
from metarl.policies import (
    DistStats,
    MLPCotangents,
    MLPPolicy,
    MLPTrace,
    OutputJacobian,
    Params,
    ReluMoments,
)
from metarl.trpo import (
    DEFAULT_FD_BASE_EPS,
    Derivatives,
    HVPMethod,
    TRPOStats,
    flatten_params,
    trpo_step,
    unflatten_params,
)


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

    def first_episodes(self, e_train: int, e_valid: int) -> MetaBatch:
        """The meta-batch of every task's first ``e_train`` train and ``e_valid`` valid
        episodes (with their advantages)."""
        k = self.num_tasks
        train_cols = episode_columns(k, self.train.episodes_per_task, e_train)
        valid_cols = episode_columns(k, self.valid.episodes_per_task, e_valid)
        return MetaBatch(
            train=self.train.first_episodes(e_train),
            train_advantages=self.train_advantages[:, train_cols],
            valid=self.valid.first_episodes(e_valid),
            valid_advantages=self.valid_advantages[:, valid_cols],
            inner=self.inner,
        )

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


# --------------------------------------------------------------- task-batched fast derivatives


class TaskRows(NamedTuple):
    """One side of a meta-batch as contiguous per-task rows ``[K, R, ...]`` with ``R = T * E``
    (a pytree for ``vmap``; under it, one task's rows satisfy :class:`StepData`)."""

    observations: Tensor
    actions: Tensor
    mask: Tensor
    log_probs: Tensor
    advantages: Tensor


def task_rows(episodes: EpisodeBatch, advantages: Tensor) -> TaskRows:
    """The steps of ``episodes`` and their ``[T, N]`` advantages as :class:`TaskRows`."""
    k = episodes.num_tasks

    def rows(x: Tensor) -> Tensor:
        per_task = split_tasks(x, k)
        return per_task.reshape(k, -1, *per_task.shape[3:]).contiguous()

    return TaskRows(
        rows(episodes.observations), rows(episodes.actions), rows(episodes.mask),
        rows(episodes.log_probs), rows(advantages),
    )  # fmt: skip


OutputFn = Callable[[Tensor, Params], Tensor]
"""A scalar function of the task-batched body output ``[K, R, out]`` and head weights."""


def _vpg_rows(policy: MLPPolicy, rows: StepData, adv: Tensor, out: Tensor, head: Params) -> Tensor:
    log_probs = policy.log_prob_from_stats(policy.head(head, out), rows.actions)
    return -masked_mean(log_probs * adv, rows.mask)


def _surrogate_rows(
    policy: MLPPolicy, rows: StepData, adv: Tensor, out: Tensor, head: Params
) -> Tensor:
    log_probs = policy.log_prob_from_stats(policy.head(head, out), rows.actions)
    return -masked_mean(importance_ratio(log_probs, rows) * adv, rows.mask)


def _kl_rows(
    policy: MLPPolicy, rows: StepData, old: DistStats, out: Tensor, head: Params
) -> Tensor:
    return masked_mean(policy.kl_from_stats(old, policy.head(head, out)), rows.mask)


def _over_tasks(
    per_task: Callable[..., Tensor], data: tuple[object, ...], *, total: bool
) -> OutputFn:
    """``(out, head) -> sum (total) or mean over tasks of per_task(*data_i, out_i, head_i)``."""

    def fn(out: Tensor, head: Params) -> Tensor:
        values: Tensor = torch.func.vmap(per_task)(*data, out, head)
        return values.sum() if total else values.mean()

    return fn


def _output_grad(fn: OutputFn, out: Tensor, head: Params) -> tuple[Tensor, Tensor, Params]:
    """``(fn, d fn / d out, d fn / d head)`` (cheap: elementwise in the outputs)."""
    grads, value = torch.func.grad_and_value(fn, argnums=(0, 1))(out, head)
    return value, grads[0], grads[1]


def _output_hvp(
    fn: OutputFn, point: tuple[Tensor, Params], tangent: tuple[Tensor, Params]
) -> tuple[Tensor, Params]:
    """The Hessian of ``fn`` in output space at ``point`` applied to ``tangent``."""
    tangents = torch.func.jvp(torch.func.grad(fn, argnums=(0, 1)), point, tangent)[1]
    return tangents[0], tangents[1]


def _flat_head(head: Params, k: int, like: Tensor) -> Tensor:
    """Task-batched head weights as ``[K, P]`` (``P = 0`` for a head without weights)."""
    if not head:
        return like.new_zeros(k, 0)
    return torch.cat([v.reshape(k, -1) for v in head.values()], 1)


def _unflat_head(flat: Tensor, like: Params) -> Params:
    """Inverse of :func:`_flat_head`: ``[K, P]`` back to task-batched weights like ``like``."""
    out, offset = {}, 0
    for name, v in like.items():
        n = v[0].numel()
        out[name] = flat[:, offset : offset + n].view_as(v)
        offset += n
    return out


@dataclass(frozen=True)
class _OutputHessian:
    """The Hessian of a row-separable output-space objective (a sum over rows of terms in one
    row's outputs and its task's head weights) at a point, as explicit blocks: ``oo`` ``[K, R,
    O, O]`` (a row's outputs), ``oh`` ``[K, R, O, P]`` (a row's outputs with the task's ``P``
    flattened head weights) and ``hh`` ``[K, P, P]``. Applying it costs a few elementwise
    passes over the outputs instead of a ``torch.func`` transform."""

    oo: Tensor
    oh: Tensor
    hh: Tensor
    head: Params

    def apply(self, out_t: Tensor, head_t: Params) -> tuple[Tensor, Params]:
        """``H (out_t, head_t)``."""
        h = _flat_head(head_t, out_t.shape[0], out_t)
        out_c = (self.oo @ out_t.unsqueeze(-1) + self.oh @ h[:, None, :, None]).squeeze(-1)
        from_out = (out_t.unsqueeze(-2) @ self.oh).sum(1).squeeze(-2)  # [K, P]
        head_c = from_out + (self.hh @ h.unsqueeze(-1)).squeeze(-1)
        return out_c, _unflat_head(head_c, self.head)


def _output_hessian(fn: OutputFn, out: Tensor, head: Params) -> _OutputHessian:
    """The :class:`_OutputHessian` of ``fn`` at ``(out, head)``: its products with the
    ``O + P`` basis tangents (one per output channel, for every row at once, and one per head
    weight), batched with ``vmap``."""
    k, r, n_out = out.shape
    flat = _flat_head(head, k, out)
    eye = torch.eye(n_out + flat.shape[1], dtype=out.dtype)
    basis_out = eye[:, :n_out, None, None].transpose(1, 3).expand(-1, k, r, n_out)
    basis_head = eye[:, None, n_out:].expand(-1, k, -1)

    def column(t_out: Tensor, t_head: Tensor) -> tuple[Tensor, Tensor]:
        out_c, head_c = _output_hvp(fn, (out, head), (t_out, _unflat_head(t_head, head)))
        return out_c, _flat_head(head_c, k, out)

    cols_out, cols_head = torch.func.vmap(column)(basis_out, basis_head)
    return _OutputHessian(
        cols_out[:n_out].permute(1, 2, 3, 0),
        cols_out[n_out:].permute(1, 2, 3, 0),
        cols_head[n_out:].permute(1, 2, 0),
        head,
    )


@dataclass(frozen=True)
class _Point:
    """Task-batched weights, the forward pass at them, the backward pass of a loss, and (when
    many products will follow) the loss's :class:`ReluMoments` and output-space Hessian."""

    params: Params
    trace: MLPTrace
    cot: MLPCotangents
    moments: ReluMoments | None = None
    hessian: _OutputHessian | None = None


@dataclass(frozen=True)
class _Adapted:
    """Inner steps from ``theta`` (kept for their Hessians unless first order) and the adapted
    weights' forward pass on the valid observations."""

    steps: tuple[_Point, ...]
    params: Params
    trace: MLPTrace
    jac: OutputJacobian | None = None
    kl_hessian: _OutputHessian | None = None


class InnerSteps:
    """The inner loop on a meta-batch's train episodes with :class:`MLPPolicy`'s task-batched
    calculus: the VPG loss summed over tasks on contiguous per-task rows, and the forward and
    backward passes of every inner step from given meta-weights."""

    def __init__(
        self, policy: MLPPolicy, train: EpisodeBatch, advantages: Tensor, inner: InnerLoop
    ) -> None:
        self.policy, self.inner, self.episodes = policy, inner, train
        self.num_tasks = train.num_tasks
        self.rows = task_rows(train, advantages)
        self.loss = _over_tasks(
            partial(_vpg_rows, policy), (self.rows, self.rows.advantages), total=True
        )

    def expand(self, theta: Params) -> Params:
        """``theta`` repeated for every task, ``[K, ...]``."""
        return {
            k: v.detach().expand(self.num_tasks, *v.shape).contiguous() for k, v in theta.items()
        }

    def point(self, params: Params) -> tuple[_Point, Params]:
        """The inner loss's forward and backward pass at ``params``, and its gradient."""
        trace = self.policy.body_trace(params, self.rows.observations)
        _, g_out, g_head = _output_grad(self.loss, trace.output, _head(self.policy, params))
        cot = self.policy.body_vjp(params, trace, g_out)
        return _Point(params, trace, cot), {**cot.grads, **g_head}

    def run(self, theta: Params) -> tuple[tuple[_Point, ...], Params]:
        """The inner steps from ``theta``: their passes (none when first order, whose
        meta-gradient does not pull back through them) and the adapted weights ``[K, ...]``."""
        params, steps = self.expand(theta), []
        for _ in range(self.inner.steps):
            point, grads = self.point(params)
            steps.append(point)
            params = {k: p - self.inner.lr * grads[k] for k, p in params.items()}
        return (() if self.inner.first_order else tuple(steps)), params


@dataclass(frozen=True)
class TrainAdaptation:
    """The adapted weights of every task from ``theta`` (``params``, ``[K, ...]``, detached:
    what the sampler collects the valid episodes with), together with the inner passes that
    :class:`MetaDerivatives` pulls the meta-gradient back through, so that the outer step
    does not adapt a second time."""

    loop: InnerSteps
    theta: Params
    steps: tuple[_Point, ...]
    params: Params


def adapt_train(
    policy: MLPPolicy, theta: Params, train: EpisodeBatch, advantages: Tensor, inner: InnerLoop
) -> TrainAdaptation:
    """Adapt ``theta`` to every task of ``train`` (the same mathematics as
    :func:`adapt_tasks`, on the task-batched calculus, keeping its passes)."""
    loop = InnerSteps(policy, train, advantages, inner)
    with torch.no_grad():
        steps, params = loop.run(theta)
    return TrainAdaptation(loop, theta, steps, params)


class MetaDerivatives:
    """Meta-surrogate, meta-KL and their derivatives for one meta-batch, computed on
    contiguous per-task rows with :class:`MLPPolicy`'s task-batched calculus (batched matrix
    products, no ``vmap`` over tasks, no autograd graph).

    Same mathematics as :func:`meta_surrogate` / :func:`meta_kl` with autograd (the tests
    check it in float64): the meta-gradient pulls the outer gradient back through every inner
    step, ``J_k^T z = z - lr H_k z`` with ``H_k`` the inner loss's Hessian (Pearlmutter's
    R-operator); first-order MAML drops that term. ``theta_old`` must be the weights the valid
    episodes were collected with: its adapted policies are the 'old' ones of the KL.
    ``adaptation`` (from :func:`adapt_train` at ``theta_old`` on ``batch.train``) is re-used
    instead of adapting again.

    The meta-gradient at ``theta_old`` is computed when first asked for.
    ``gauss_newton=True`` keeps what :meth:`gauss_newton_hvp` needs at ``theta_old`` (the
    passes there, the output-space Hessians of the inner loss and of the KL and, when the
    policy supports them, the row sums of :meth:`MLPPolicy.relu_moments`, which make every
    product several times cheaper).
    """

    def __init__(
        self,
        policy: MLPPolicy,
        theta_old: Params,
        batch: MetaBatch,
        *,
        gauss_newton: bool = False,
        adaptation: TrainAdaptation | None = None,
    ) -> None:
        self.policy, self.inner, self.theta_old = policy, batch.inner, theta_old
        self.num_tasks = batch.num_tasks
        if adaptation is None:
            adaptation = adapt_train(
                policy, theta_old, batch.train, batch.train_advantages, batch.inner
            )
        elif not (
            adaptation.theta is theta_old
            and adaptation.loop.episodes is batch.train
            and adaptation.loop.inner == batch.inner
        ):
            raise ValueError(
                "MetaDerivatives: the adaptation must come from adapt_train at theta_old on "
                "this batch's train episodes with its inner-loop settings"
            )
        self._loop = adaptation.loop
        self.train = self._loop.rows
        self.valid = task_rows(batch.valid, batch.valid_advantages)
        self._inner_loss = self._loop.loss
        self._surrogate = _over_tasks(
            partial(_surrogate_rows, policy), (self.valid, self.valid.advantages), total=False
        )
        with torch.no_grad():
            old = self._valid_pass(adaptation.steps, adaptation.params)
            head = _head(policy, old.params)
            self.old_stats: DistStats = torch.func.vmap(policy.head)(head, old.trace.output)
        self._kl = _over_tasks(partial(_kl_rows, policy), (self.valid, self.old_stats), total=False)
        with torch.no_grad():
            prepared = self._prepared(old) if gauss_newton else old
        self._old = prepared if gauss_newton else None
        self._at_old: _Adapted | None = prepared  # dropped once the gradient is taken
        self._old_loss_grad: tuple[Tensor, Tensor] | None = None

    # ---------------------------------------------------------------- inner loop

    def _expand(self, theta: Params) -> Params:
        return self._loop.expand(theta)

    def _valid_pass(self, steps: tuple[_Point, ...], params: Params) -> _Adapted:
        return _Adapted(steps, params, self.policy.body_trace(params, self.valid.observations))

    def _adapt(self, theta: Params) -> _Adapted:
        return self._valid_pass(*self._loop.run(theta))

    def _prepared(self, adapted: _Adapted) -> _Adapted:
        """``adapted`` with the output-space Hessians of every inner step and of the KL, and
        the low-rank row sums where the policy supports them."""
        policy, low_rank = self.policy, self.policy.supports_low_rank()
        steps = tuple(
            replace(
                p,
                moments=policy.relu_moments(p.params, p.trace, p.cot) if low_rank else None,
                hessian=_output_hessian(self._inner_loss, p.trace.output, _head(policy, p.params)),
            )
            for p in adapted.steps
        )
        return replace(
            adapted,
            steps=steps,
            jac=policy.output_jacobian(adapted.params, adapted.trace) if low_rank else None,
            kl_hessian=_output_hessian(
                self._kl, adapted.trace.output, _head(policy, adapted.params)
            ),
        )

    def _output_hvp_at(
        self, fn: OutputFn, hessian: _OutputHessian | None, at: tuple[Tensor, Params],
        tangent: tuple[Tensor, Params],
    ) -> tuple[Tensor, Params]:  # fmt: skip
        return _output_hvp(fn, at, tangent) if hessian is None else hessian.apply(*tangent)

    def _inner_hvp(self, point: _Point, u: Params) -> Params:
        """``H u``: the inner loss's Hessian at ``point`` times task-batched ``u``."""
        policy, m = self.policy, point.moments
        tangent = _head(policy, u)
        at = (point.trace.output, _head(policy, point.params))
        hvp = partial(self._output_hvp_at, self._inner_loss, point.hessian, at)
        if m is None:
            tan = policy.body_jvp(point.params, point.trace, u)
            out_t, head_t = hvp((tan.output, tangent))
            body_t = policy.body_vjp_tangent(point.params, point.trace, point.cot, u, tan, out_t)
        else:
            out_t, p = policy.low_rank_jvp(point.params, point.trace, m.jac, u)
            out_t, head_t = hvp((out_t, tangent))
            body_t = policy.low_rank_vjp_tangent(
                point.params, point.trace, point.cot, m, u, p, out_t
            )
        return {**body_t, **head_t}

    def _valid_jvp(self, adapted: _Adapted, u: Params) -> Tensor:
        """Tangent of the adapted policies' body outputs on the valid observations."""
        if adapted.jac is None:
            return self.policy.body_jvp(adapted.params, adapted.trace, u).output
        return self.policy.low_rank_jvp(adapted.params, adapted.trace, adapted.jac, u)[0]

    def _valid_vjp(self, adapted: _Adapted, out_cot: Tensor) -> Params:
        """Body weight cotangents of the adapted policies for valid output cotangents."""
        if adapted.jac is None:
            return self.policy.body_vjp(adapted.params, adapted.trace, out_cot).grads
        return self.policy.low_rank_vjp(adapted.params, adapted.trace, adapted.jac, out_cot)

    def _through_step(self, point: _Point, u: Params) -> Params:
        """``(I - lr H) u``: the inner step's Jacobian (symmetric) times ``u``."""
        hu = self._inner_hvp(point, u)
        return {k: u[k] - self.inner.lr * hu[k] for k in u}

    def _pull_back(self, adapted: _Adapted, z: Params) -> Tensor:
        """Flat ``sum_i J_i^T z_i`` from cotangents ``z_i`` of the adapted weights."""
        for point in reversed(adapted.steps):
            z = self._through_step(point, z)
        return flatten_params({k: z[k].sum(0) for k in self.theta_old})

    # ---------------------------------------------------------------- objectives

    def _value_and_grad(self, fn: OutputFn, adapted: _Adapted) -> tuple[Tensor, Tensor]:
        head = _head(self.policy, adapted.params)
        value, g_out, g_head = _output_grad(fn, adapted.trace.output, head)
        grads = self._valid_vjp(adapted, g_out)
        return value.detach(), self._pull_back(adapted, {**grads, **g_head})

    def loss_and_grad(self, theta: Params) -> tuple[Tensor, Tensor]:
        """``(meta_surrogate, its flat gradient)`` at ``theta`` (at ``theta_old`` itself,
        computed once and kept)."""
        if theta is self.theta_old:
            if self._old_loss_grad is None:
                assert self._at_old is not None
                with torch.no_grad():
                    self._old_loss_grad = self._value_and_grad(self._surrogate, self._at_old)
                self._at_old = None  # leave the memory to finite differences or double backprop
            return self._old_loss_grad
        with torch.no_grad():
            return self._value_and_grad(self._surrogate, self._adapt(theta))

    def kl_grad(self, theta: Params) -> Tensor:
        """Flat gradient of the meta-KL at ``theta``, re-adapting from the same episodes."""
        with torch.no_grad():
            return self._value_and_grad(self._kl, self._adapt(theta))[1]

    def loss_and_kl(self, theta: Params) -> tuple[Tensor, Tensor]:
        """``(meta_surrogate, meta_kl)`` at ``theta`` (forward only, for the line search)."""
        with torch.no_grad():
            adapted = self._adapt(theta)
            head = _head(self.policy, adapted.params)
            out = adapted.trace.output
            return self._surrogate(out, head), self._kl(out, head)

    def gauss_newton_hvp(self, v: Tensor) -> Tensor:
        """``J^T F J v`` at ``theta_old``: ``J`` maps the meta-weights to the adapted policies'
        outputs on the valid observations (through the inner steps), ``F`` is the Hessian of
        the meta-KL in those outputs at the old policies (their Fisher information, masked and
        averaged like :func:`meta_kl`). At ``theta_old`` the KL's output gradient vanishes, so
        this *is* the meta-KL's Hessian there (not elsewhere); nothing is re-adapted. Needs
        ``gauss_newton=True`` on construction."""
        old, policy = self._old, self.policy
        if old is None:
            raise ValueError("gauss_newton_hvp needs MetaDerivatives(..., gauss_newton=True)")
        with torch.no_grad():
            u = self._expand(unflatten_params(v, self.theta_old))
            for point in old.steps:
                u = self._through_step(point, u)
            at = (old.trace.output, _head(policy, old.params))
            tangent = (self._valid_jvp(old, u), _head(policy, u))
            out_c, head_c = self._output_hvp_at(self._kl, old.kl_hessian, at, tangent)
            return self._pull_back(old, {**self._valid_vjp(old, out_c), **head_c})


def _head(policy: MLPPolicy, params: Params) -> Params:
    return policy.head_params(params)


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
    """How Hessian-vector products of the meta-KL are computed: ``finite_difference`` (the
    paper's), ``exact`` (double backprop) or ``gauss_newton`` (``J^T F J``, exact at the old
    weights where TRPO needs it, and the fastest)."""
    fd_base_eps: float = DEFAULT_FD_BASE_EPS
    """Finite-difference scale; ``eps = fd_base_eps / |theta|`` (see
    :data:`metarl.trpo.DEFAULT_FD_BASE_EPS` for why not the paper's 1e-5)."""
    backtrack_ratio: float = 0.8
    """Line-search shrink factor."""
    max_backtracks: int = 15
    """Line-search tries."""
    hvp_subsample: float = 1.0
    """Fraction of every task's episodes (at least one) whose meta-KL curvature the
    Hessian-vector products use: each task is adapted on that share of its train episodes and
    its KL taken on that share of its valid episodes. 1.0 uses all, as the paper. The gradient
    and the line search always use all."""

    def __post_init__(self) -> None:
        if not 0.0 < self.hvp_subsample <= 1.0:
            raise ValueError(f"hvp_subsample must be in (0, 1], got {self.hvp_subsample}")

    def curvature_episodes(self, episodes_per_task: int) -> int:
        """How many of a task's ``episodes_per_task`` episodes the products use."""
        return max(1, math.ceil(self.hvp_subsample * episodes_per_task - 1e-9))


def meta_trpo_step(
    policy: MLPPolicy,
    params: Params,
    batch: MetaBatch,
    settings: TRPOSettings | None = None,
    *,
    adaptation: TrainAdaptation | None = None,
) -> tuple[Params, TRPOStats]:
    """One outer TRPO step on the meta-surrogate, with the meta-KL as the constraint.

    ``params`` must be the meta-weights the valid episodes were collected with (after
    adaptation), so that the old adapted policy is the sampling one. Gradients, finite
    differences, Gauss-Newton products and the line search run on :class:`MetaDerivatives`
    (re-using ``adaptation``, from :func:`adapt_train` at ``params`` on ``batch.train``, when
    given); ``hvp="exact"`` differentiates the autograd :func:`meta_kl` twice.
    """
    s = settings or TRPOSettings()
    gauss_newton = s.hvp == "gauss_newton"
    fast = MetaDerivatives(policy, params, batch, gauss_newton=gauss_newton, adaptation=adaptation)
    old = _by_task_stats(fast.old_stats, batch.valid)
    e_train = s.curvature_episodes(batch.train.episodes_per_task)
    e_valid = s.curvature_episodes(batch.valid.episodes_per_task)
    full = (e_train, e_valid) == (batch.train.episodes_per_task, batch.valid.episodes_per_task)
    sub = batch if full else batch.first_episodes(e_train, e_valid)
    curv = fast if sub is batch else MetaDerivatives(policy, params, sub, gauss_newton=gauss_newton)
    derivatives = Derivatives(
        loss_grad=fast.loss_and_grad, kl_grad=curv.kl_grad, gauss_newton=curv.gauss_newton_hvp
    )
    return trpo_step(
        params,
        partial(meta_surrogate, policy, batch=batch),
        partial(_meta_kl_at, policy, batch, old),
        max_kl=s.max_kl, damping=s.damping, cg_iters=s.cg_iters, hvp=s.hvp,
        fd_base_eps=s.fd_base_eps, backtrack_ratio=s.backtrack_ratio,
        max_backtracks=s.max_backtracks, loss_kl_fn=fast.loss_and_kl, derivatives=derivatives,
        curvature_kl_fn=partial(
            _meta_kl_at, policy, sub, _by_task_stats(curv.old_stats, sub.valid)
        ),
    )  # fmt: skip


def _by_task_stats(stats: DistStats, valid: EpisodeBatch) -> DistStats:
    """Row-layout ``[K, T * E, ...]`` statistics back in ``by_task`` layout ``[K, T, E, ...]``."""
    k, t, e = valid.num_tasks, valid.horizon, valid.episodes_per_task
    return {name: x.reshape(k, t, e, *x.shape[2:]) for name, x in stats.items()}


def _meta_kl_at(policy: MLPPolicy, batch: MetaBatch, old: DistStats, params: Params) -> Tensor:
    return meta_kl(policy, params, batch, old)


def _loss_kl_at(
    policy: MLPPolicy, batch: MetaBatch, old: DistStats, params: Params
) -> tuple[Tensor, Tensor]:
    return meta_surrogate_and_kl(policy, params, batch, old)
