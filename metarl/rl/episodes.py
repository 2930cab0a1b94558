"""Padded batches of episodes and the return / advantage estimators computed on them.

Layout: every per-step tensor is time-major ``[T, N, ...]``, padded to the longest episode ``T``;
``mask[t, n]`` is 1.0 on real steps. Episodes are task-major: episode ``n`` belongs to task
``n // episodes_per_task``, so ``[T, N]`` reshapes for free to ``[T, num_tasks, E]``.

The estimators are pure functions on ``[T, N]`` tensors, exact for padded batches where every
episode has its own length: padded steps never leak into real ones, and results are 0 there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class TaskEpisodes(NamedTuple):
    """The tensors of an :class:`EpisodeBatch` with a leading task axis (a pytree for ``vmap``).

    From :meth:`EpisodeBatch.by_task`, per-step tensors are ``[num_tasks, T, E, ...]`` and
    per-episode tensors ``[num_tasks, E, ...]``; under ``torch.func.vmap`` over dim 0 each task
    sees ``[T, E, ...]`` and ``[E, ...]``.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    lengths: Tensor
    terminated: Tensor
    truncated: Tensor
    last_observations: Tensor
    log_probs: Tensor


def split_tasks(x: Tensor, num_tasks: int, *, time_major: bool = True) -> Tensor:
    """Reshape a task-major tensor to have a leading task axis (a view, no copy).

    ``[T, N, ...] -> [num_tasks, T, E, ...]`` if ``time_major``, else ``[N, ...] ->
    [num_tasks, E, ...]``, with ``N = num_tasks * E``.
    """
    if not time_major:
        return x.reshape(num_tasks, x.shape[0] // num_tasks, *x.shape[1:])
    t, n = x.shape[0], x.shape[1]
    return x.reshape(t, num_tasks, n // num_tasks, *x.shape[2:]).movedim(1, 0)


def merge_tasks(x: Tensor, *, time_major: bool = True) -> Tensor:
    """Inverse of :func:`split_tasks`: ``[K, T, E, ...] -> [T, K * E, ...]`` (or ``[K, E, ...]
    -> [K * E, ...]`` if not ``time_major``)."""
    if not time_major:
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    k, t, e = x.shape[0], x.shape[1], x.shape[2]
    return x.movedim(0, 1).reshape(t, k * e, *x.shape[3:])


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes of ``num_tasks`` tasks x ``episodes_per_task`` each, padded to ``T`` steps.

    Attributes:
        observations: ``[T, N, obs_dim]`` float, the observation each action was taken in.
        actions: ``[T, N, act_dim]`` float (continuous) or ``[T, N]`` long (discrete).
        rewards: ``[T, N]`` float, 0 on padded steps.
        mask: ``[T, N]`` float, 1.0 on real steps (a prefix of each column), 0.0 on padding.
        lengths: ``[N]`` long, number of real steps of each episode (0 <= length <= T). A
            length of 0 is an empty column: a task with fewer episodes than
            ``episodes_per_task`` is padded with them at its end (:func:`pad_tasks`); every
            task holds at least one real episode.
        terminated: ``[N]`` bool, the episode reached a true terminal state (no bootstrap).
        truncated: ``[N]`` bool, the episode was cut by the time limit (bootstrapped).
            An episode that is both counts as terminated; neither is treated like truncated.
        last_observations: ``[N, obs_dim]``, the observation after the final real step.
        log_probs: ``[T, N]`` log-probability of each action under the sampling policy.
        num_tasks: number of tasks K.
        episodes_per_task: number of episodes per task E; ``N = K * E``, task-major.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    lengths: Tensor
    terminated: Tensor
    truncated: Tensor
    last_observations: Tensor
    log_probs: Tensor
    num_tasks: int
    episodes_per_task: int

    def __post_init__(self) -> None:
        _validate_counts(self)
        _validate_shapes(self)
        if self.mask.device.type != "meta":  # a batch on the meta device has no data to check
            _validate_mask(self)

    @property
    def horizon(self) -> int:
        """Padded length ``T``."""
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        """``N = num_tasks * episodes_per_task``."""
        return self.num_tasks * self.episodes_per_task

    @property
    def returns(self) -> Tensor:
        """Undiscounted return of each episode, ``[N]`` (0 for an empty column)."""
        return (self.rewards * self.mask).sum(0)

    def mean_return(self) -> float:
        """Mean undiscounted return over the real episodes (empty columns left out)."""
        return float(self.returns[self.lengths > 0].double().mean())

    def episode_counts(self) -> Tensor:
        """Real episodes of each task, ``[num_tasks]``."""
        return (self.lengths > 0).reshape(self.num_tasks, self.episodes_per_task).sum(1)

    def to(self, device: torch.device | str) -> EpisodeBatch:
        """The batch with every tensor on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.observations.device == device:
            return self
        return EpisodeBatch(
            observations=self.observations.to(device),
            actions=self.actions.to(device),
            rewards=self.rewards.to(device),
            mask=self.mask.to(device),
            lengths=self.lengths.to(device),
            terminated=self.terminated.to(device),
            truncated=self.truncated.to(device),
            last_observations=self.last_observations.to(device),
            log_probs=self.log_probs.to(device),
            num_tasks=self.num_tasks,
            episodes_per_task=self.episodes_per_task,
        )

    def by_task(self) -> TaskEpisodes:
        """All tensors with a leading task axis (views): ``[K, T, E, ...]`` / ``[K, E, ...]``."""
        k = self.num_tasks
        return TaskEpisodes(
            observations=split_tasks(self.observations, k),
            actions=split_tasks(self.actions, k),
            rewards=split_tasks(self.rewards, k),
            mask=split_tasks(self.mask, k),
            lengths=split_tasks(self.lengths, k, time_major=False),
            terminated=split_tasks(self.terminated, k, time_major=False),
            truncated=split_tasks(self.truncated, k, time_major=False),
            last_observations=split_tasks(self.last_observations, k, time_major=False),
            log_probs=split_tasks(self.log_probs, k),
        )

    def first_episodes(self, e: int) -> EpisodeBatch:
        """The first ``e`` episodes of every task as a batch (copies; a task's episodes are
        i.i.d., so a random subset of each)."""
        if not 1 <= e <= self.episodes_per_task:
            raise IndexError(
                f"EpisodeBatch.first_episodes: e={e} is not within [1, {self.episodes_per_task}]"
            )
        cols = episode_columns(self.num_tasks, self.episodes_per_task, e)
        return self._columns(cols, self.num_tasks, e)

    def task(self, i: int) -> EpisodeBatch:
        """The episodes of task ``i`` as a batch of one task (tensors are views)."""
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"EpisodeBatch.task: task {i} out of range [0, {self.num_tasks})")
        return self.tasks(i, i + 1)

    def tasks(self, start: int, stop: int) -> EpisodeBatch:
        """The episodes of tasks ``start .. stop - 1`` as a batch (tensors are views)."""
        if not 0 <= start < stop <= self.num_tasks:
            raise IndexError(
                f"EpisodeBatch.tasks: [{start}, {stop}) is not within [0, {self.num_tasks})"
            )
        sl = slice(start * self.episodes_per_task, stop * self.episodes_per_task)
        return self._columns(sl, stop - start, self.episodes_per_task)

    def episodes(self, cols: Tensor) -> EpisodeBatch:
        """Episodes ``cols`` (indices) of a one-task batch, as a one-task batch (copies)."""
        if self.num_tasks != 1:
            raise ValueError(f"EpisodeBatch.episodes: a batch of {self.num_tasks} tasks, not 1")
        if cols.numel() == 0:
            raise IndexError("EpisodeBatch.episodes: no episodes selected")
        return self._columns(cols, 1, int(cols.numel()))

    def _columns(
        self, cols: slice | Tensor, num_tasks: int, episodes_per_task: int
    ) -> EpisodeBatch:
        """The episodes in columns ``cols`` (task-major) as a batch."""
        return EpisodeBatch(
            observations=self.observations[:, cols],
            actions=self.actions[:, cols],
            rewards=self.rewards[:, cols],
            mask=self.mask[:, cols],
            lengths=self.lengths[cols],
            terminated=self.terminated[cols],
            truncated=self.truncated[cols],
            last_observations=self.last_observations[cols],
            log_probs=self.log_probs[:, cols],
            num_tasks=num_tasks,
            episodes_per_task=episodes_per_task,
        )


def episode_columns(num_tasks: int, episodes_per_task: int, e: int) -> Tensor:
    """Columns of a task-major ``[T, K * E]`` layout that hold each task's first ``e``
    episodes, in order."""
    starts = torch.arange(num_tasks) * episodes_per_task
    return (starts[:, None] + torch.arange(e)[None, :]).reshape(-1)


def concat_tasks(parts: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """Batches of consecutive task sets joined in order (still task-major), zero-padded to the
    longest ``T``: how a sampler merges what its workers collected on slices of the tasks."""
    if not parts:
        raise ValueError("concat_tasks: no batches")
    per_task = {p.episodes_per_task for p in parts}
    if len(per_task) != 1:
        raise ValueError(f"concat_tasks: batches differ in episodes_per_task: {sorted(per_task)}")
    return _joined(parts, sum(p.num_tasks for p in parts), per_task.pop())


def concat_episodes(parts: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """Batches of one task joined as one task's episodes, in order, zero-padded to the longest
    ``T``: a task's batch gathered over several sampler calls."""
    if not parts:
        raise ValueError("concat_episodes: no batches")
    if any(p.num_tasks != 1 for p in parts):
        raise ValueError("concat_episodes: every batch must hold one task")
    return _joined(parts, 1, sum(p.episodes_per_task for p in parts))


def pad_tasks(parts: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """One-task batches with any number of episodes as one batch of ``len(parts)`` tasks, each
    task's episodes in order and then empty columns (length 0) up to the largest count."""
    if not parts:
        raise ValueError("pad_tasks: no batches")
    if any(p.num_tasks != 1 for p in parts):
        raise ValueError("pad_tasks: every batch must hold one task")
    width = max(p.episodes_per_task for p in parts)
    filled = [p if p.episodes_per_task == width else _with_empty(p, width) for p in parts]
    return _joined(filled, len(parts), width)


def _with_empty(part: EpisodeBatch, width: int) -> EpisodeBatch:
    """A one-task batch followed by empty columns up to ``width`` episodes."""
    extra = width - part.episodes_per_task

    def zeros(x: Tensor, dim: int) -> Tensor:
        shape = list(x.shape)
        shape[dim] = extra
        return torch.cat([x, x.new_zeros(shape)], dim=dim)

    return EpisodeBatch(
        observations=zeros(part.observations, 1),
        actions=zeros(part.actions, 1),
        rewards=zeros(part.rewards, 1),
        mask=zeros(part.mask, 1),
        lengths=zeros(part.lengths, 0),
        terminated=torch.cat([part.terminated, part.terminated.new_ones(extra)]),
        truncated=zeros(part.truncated, 0),
        last_observations=zeros(part.last_observations, 0),
        log_probs=zeros(part.log_probs, 1),
        num_tasks=1,
        episodes_per_task=width,
    )


def _joined(parts: Sequence[EpisodeBatch], num_tasks: int, episodes_per_task: int) -> EpisodeBatch:
    """The episodes of ``parts`` side by side (columns in order), padded to the longest ``T``."""
    horizon = max(p.horizon for p in parts)

    def steps(name: str) -> Tensor:
        tensors = [getattr(p, name) for p in parts]
        padded = [
            torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, horizon - x.shape[0]))
            for x in tensors
        ]
        return torch.cat(padded, dim=1)

    def episodes(name: str) -> Tensor:
        return torch.cat([getattr(p, name) for p in parts], dim=0)

    return EpisodeBatch(
        observations=steps("observations"),
        actions=steps("actions"),
        rewards=steps("rewards"),
        mask=steps("mask"),
        lengths=episodes("lengths"),
        terminated=episodes("terminated"),
        truncated=episodes("truncated"),
        last_observations=episodes("last_observations"),
        log_probs=steps("log_probs"),
        num_tasks=num_tasks,
        episodes_per_task=episodes_per_task,
    )


def _validate_counts(b: EpisodeBatch) -> None:
    if b.num_tasks < 1 or b.episodes_per_task < 1:
        raise ValueError(
            f"EpisodeBatch: num_tasks ({b.num_tasks}) and episodes_per_task "
            f"({b.episodes_per_task}) must both be >= 1"
        )


def _expect(name: str, x: Tensor, shape: tuple[int, ...], kind: str) -> None:
    """Raise a clear error unless ``x`` has exactly ``shape`` and dtype kind ``kind``."""
    if tuple(x.shape) != shape:
        raise ValueError(f"EpisodeBatch: {name} must have shape {shape}, got {tuple(x.shape)}")
    ok = {
        "float": x.dtype.is_floating_point,
        "long": x.dtype == torch.long,
        "bool": x.dtype == torch.bool,
    }[kind]
    if not ok:
        raise TypeError(f"EpisodeBatch: {name} must be a {kind} tensor, got {x.dtype}")


def _validate_shapes(b: EpisodeBatch) -> None:
    if b.observations.dim() != 3:
        raise ValueError(
            "EpisodeBatch: observations must be [T, N, obs_dim], got shape "
            f"{tuple(b.observations.shape)}"
        )
    t, n, obs_dim = b.observations.shape
    if n != b.num_tasks * b.episodes_per_task:
        raise ValueError(
            f"EpisodeBatch: N = {n} episodes, but num_tasks * episodes_per_task = "
            f"{b.num_tasks} * {b.episodes_per_task} = {b.num_tasks * b.episodes_per_task}"
        )
    _expect("observations", b.observations, (t, n, obs_dim), "float")
    if b.actions.dim() == 2:
        _expect("actions (discrete)", b.actions, (t, n), "long")
    else:
        _expect("actions (continuous)", b.actions, (t, n, b.actions.shape[-1]), "float")
    for name in ("rewards", "mask", "log_probs"):
        _expect(name, getattr(b, name), (t, n), "float")
    _expect("lengths", b.lengths, (n,), "long")
    _expect("terminated", b.terminated, (n,), "bool")
    _expect("truncated", b.truncated, (n,), "bool")
    _expect("last_observations", b.last_observations, (n, obs_dim), "float")


def _validate_mask(b: EpisodeBatch) -> None:
    t = b.horizon
    if bool(((b.lengths < 0) | (b.lengths > t)).any()):
        raise ValueError(f"EpisodeBatch: lengths must lie in [0, T={t}], got {b.lengths.tolist()}")
    if bool((b.lengths.reshape(b.num_tasks, -1).amax(1) < 1).any()):
        raise ValueError("EpisodeBatch: every task must hold an episode of length >= 1")
    steps = torch.arange(t, device=b.mask.device).unsqueeze(1)
    expected = (steps < b.lengths.unsqueeze(0)).to(b.mask.dtype)
    if not torch.equal(b.mask, expected):
        raise ValueError(
            "EpisodeBatch: mask must be 1.0 exactly on the first lengths[n] steps of each "
            "episode and 0.0 after"
        )


def discount_matrix(horizon: int, discount: float, *, like: Tensor) -> Tensor:
    """Upper-triangular ``[T, T]`` matrix ``D[t, k] = discount**(k - t)`` for ``k >= t``, else 0.

    ``D @ x`` is the reverse discounted cumulative sum ``y_t = sum_{k>=t} discount**(k-t) x_k``
    of a ``[T, N]`` tensor: the whole reverse scan in one matrix product.
    """
    idx = torch.arange(horizon, device=like.device, dtype=like.dtype)
    lag = idx.unsqueeze(0) - idx.unsqueeze(1)
    powers = torch.pow(torch.as_tensor(discount, dtype=like.dtype, device=like.device), lag)
    return torch.where(lag >= 0, powers, torch.zeros((), dtype=like.dtype, device=like.device))


def discounted_cumsum(x: Tensor, discount: float) -> Tensor:
    """``y_t = sum_{k >= t} discount**(k - t) x_k`` along dim 0 of a ``[T, ...]`` tensor."""
    d = discount_matrix(x.shape[0], discount, like=x)
    return (d @ x.reshape(x.shape[0], -1)).reshape(x.shape)


def last_step(mask: Tensor) -> Tensor:
    """``[T, N]`` float indicator of each episode's final real step (mask is a prefix)."""
    next_mask = torch.cat([mask[1:], torch.zeros_like(mask[:1])])
    return mask * (1.0 - next_mask)


def discounted_returns(
    rewards: Tensor, mask: Tensor, gamma: float, bootstrap: Tensor | None = None
) -> Tensor:
    """Discounted reward-to-go ``R_t = sum_{k=t}^{L-1} gamma**(k-t) r_k + gamma**(L-t) b``.

    Args:
        rewards: ``[T, N]``; padded steps are ignored.
        mask: ``[T, N]``, 1.0 on real steps.
        gamma: discount factor.
        bootstrap: optional ``[N]`` value ``b`` of the state after the last step (pass 0 for
            terminated episodes); ``None`` means ``b = 0`` (Monte Carlo returns).

    Returns:
        ``[T, N]`` returns, 0 on padded steps.
    """
    real = mask > 0
    r = torch.where(real, rewards, torch.zeros_like(rewards))
    if bootstrap is not None:
        r = r + gamma * last_step(mask) * bootstrap.unsqueeze(0)
    return discounted_cumsum(r, gamma) * mask


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float,
    lam: float,
    last_values: Tensor,
    terminated: Tensor,
) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) on a padded batch.

    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)`` and ``A_t = sum_k (gamma lam)**k delta_{t+k}``
    over the episode's real steps. After the final step ``V(s_L)`` is ``last_values`` for an
    episode that was cut (truncated), and 0 for a ``terminated`` one.

    Args:
        rewards, values, mask: ``[T, N]``; ``values[t]`` is ``V(s_t)``.
        gamma: discount; lam: GAE lambda (1 gives ``return - V``, 0 the one-step TD error).
        last_values: ``[N]`` value of the observation after the final step.
        terminated: ``[N]`` bool.

    Returns:
        ``[T, N]`` advantages, 0 on padded steps.
    """
    zero = torch.zeros_like(rewards)
    real = mask > 0
    r = torch.where(real, rewards, zero)
    v = torch.where(real, values, zero)
    boot = torch.where(terminated, torch.zeros_like(last_values), last_values)
    next_v = torch.cat([v[1:], zero[:1]]) + last_step(mask) * boot.unsqueeze(0)
    delta = torch.where(real, r + gamma * next_v - v, zero)
    return discounted_cumsum(delta, gamma * lam) * mask
