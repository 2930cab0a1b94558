"""Batches of a fixed number of env steps, collected the way the paper's code did.

rllab's vectorized sampler (``sandbox/rocky/tf/samplers/vectorized_sampler.py`` in
cbfinn/maml_rl), which the paper's test scripts used, runs ``batch_size / max_path_length``
sub-envs side by side; each sub-env starts a new episode as soon as its last one ends. After
every env step it adds the episodes that ended to the batch, and it stops once the episodes in
the batch hold ``batch_size`` env steps; episodes still running then are dropped. When
episodes end early (a 2-D navigation goal reached, an ant out of its healthy height), a task
therefore gets more, and shorter, episodes than sub-envs, and the batch favours the short ones:
an episode that is still running at the stop is more likely a long one.

:func:`sample_step_budget` reproduces that batch from :meth:`EpisodeSampler.sample` calls:
call ``r`` gives every sub-env its ``r``-th episode, and :func:`kept_episodes` keeps the
episodes rllab's loop would have kept, sampling more rounds until that is decided for every
task. The episodes of a task are i.i.d., so the batch has the distribution of rllab's.

The paper's meta-training ran the same sampler with one sub-env per task and a budget of
``meta_batch_size x fast_batch_size x max_path_length`` env steps shared by all tasks
(``BatchMAMLPolopt``); :func:`sample_shared_budget` reproduces that batch. Sub-envs step in
lockstep, so every task runs about the same number of env steps, and a task whose episodes end
early gets more of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from metarl.rl.episodes import EpisodeBatch, concat_episodes, pad_tasks
from metarl.rl.policies import Params, Policy
from metarl.rl.sampling.base import EpisodeSampler


def kept_episodes(lengths: np.ndarray, budget: int) -> np.ndarray | None:
    """Which episodes the vectorized sampler keeps, or None if ``lengths`` does not decide it.

    ``lengths[r, s]``: the length of sub-env ``s``'s ``r``-th episode (its episodes run back to
    back, so it ends at env step ``lengths[:r + 1, s].sum()``). The sampler stops after the
    first env step at which the episodes ended so far hold at least ``budget`` steps, keeping
    every episode that ended by then. Undecided when a sub-env's last given episode ends before
    that step: its next episode, not given, might end in time too.
    """
    if lengths.ndim != 2 or lengths.size == 0 or (lengths < 1).any() or budget < 1:
        raise ValueError("kept_episodes: lengths must be a non-empty [rounds, sub-envs] >= 1")
    ends = np.cumsum(lengths, axis=0)
    order = np.argsort(ends, axis=None, kind="stable")
    done = np.cumsum(lengths.ravel()[order])
    first = int(np.searchsorted(done, budget))  # the first episode that fills the budget
    if first == done.size:
        return None
    stop = ends.ravel()[order[first]]
    if (ends[-1] < stop).any():
        return None
    kept: np.ndarray = ends <= stop
    return kept


def sample_step_budget(
    sampler: EpisodeSampler,
    policy: Policy,
    params: Params,
    tasks: Sequence[Any],
    *,
    generator: torch.Generator,
    seed: int,
    per_task_params: bool = False,
) -> list[EpisodeBatch]:
    """One batch per task of ``sampler.episodes_per_task * sampler.horizon`` env steps, as
    rllab's vectorized sampler collects it with ``sampler.episodes_per_task`` sub-envs.

    The first round is :meth:`EpisodeSampler.sample` with ``seed`` itself, so when no episode
    ends before the horizon the batch is exactly that call's episodes. It takes at most
    ``2 * horizon - 1`` rounds: each round adds at least one env step to every sub-env, and by
    env step ``2 * horizon - 1`` every sub-env has ended episodes of at least ``horizon``
    steps, which meets the budget.
    """
    budget = sampler.episodes_per_task * sampler.horizon
    call = partial(sampler.sample, policy, params, tasks, per_task_params=per_task_params)
    for rounds in _rounds(call, generator, seed):
        kept = _kept_per_task(rounds, budget)
        if kept is not None:
            return [_task_batch(rounds, k, mask) for k, mask in enumerate(kept)]
    raise AssertionError("unreachable: _rounds never ends")


def sample_shared_budget(
    sampler: EpisodeSampler,
    policy: Policy,
    params: Params,
    tasks: Sequence[Any],
    *,
    generator: torch.Generator,
    seed: int,
    per_task_params: bool = False,
) -> EpisodeBatch:
    """The paper's meta-training batch: one sub-env per task running episodes back to back,
    until the episodes that ended hold ``len(tasks) * sampler.episodes_per_task *
    sampler.horizon`` env steps in all; episodes still running are dropped.

    A task's sub-env runs the episodes of its ``episodes_per_task`` sub-envs in round 0, then
    those of round 1, and so on (its episodes are i.i.d., so the order is immaterial). The
    result has one column per episode of the task with the most, the other tasks padded with
    empty columns (:func:`~metarl.rl.episodes.pad_tasks`). When no episode ends before the
    horizon it is exactly the round-0 call: ``episodes_per_task`` full episodes per task. At
    most ``2 * horizon - 1`` rounds, as :func:`sample_step_budget`.
    """
    num_tasks, envs = len(tasks), sampler.episodes_per_task
    budget = num_tasks * envs * sampler.horizon
    call = partial(sampler.sample, policy, params, tasks, per_task_params=per_task_params)
    for rounds in _rounds(call, generator, seed):
        if len(rounds) == 1 and not bool((rounds[0].lengths < sampler.horizon).any()):
            return rounds[0]  # every episode ran to the horizon: the budget is exactly filled
        streams = torch.cat([b.lengths.reshape(num_tasks, envs) for b in rounds], dim=1)
        kept = kept_episodes(streams.T.numpy(), budget)
        if kept is not None:
            per_round = kept.T.reshape(num_tasks, len(rounds), envs)
            return pad_tasks([_task_batch(rounds, k, per_round[k]) for k in range(num_tasks)])
    raise AssertionError("unreachable: _rounds never ends")


def _rounds(
    call: Callable[..., EpisodeBatch], generator: torch.Generator, seed: int
) -> Iterator[list[EpisodeBatch]]:
    """The rounds sampled so far, one more each time: round 0 is ``call`` with ``seed``
    itself, round ``r`` with a seed derived from ``(seed, r)``; the actions all come from
    ``generator``."""
    rounds: list[EpisodeBatch] = []
    while True:
        round_seed = seed if not rounds else _round_seed(seed, len(rounds))
        rounds.append(call(generator=generator, seed=round_seed))
        yield rounds


def _round_seed(seed: int, r: int) -> int:
    return int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def _kept_per_task(rounds: Sequence[EpisodeBatch], budget: int) -> list[np.ndarray] | None:
    """Each task's kept mask ``[rounds, sub-envs]``, or None while any task is undecided."""
    num_tasks, envs = rounds[0].num_tasks, rounds[0].episodes_per_task
    lengths = torch.stack([b.lengths.reshape(num_tasks, envs) for b in rounds], dim=1).numpy()
    kept = [kept_episodes(lengths[k], budget) for k in range(num_tasks)]
    if any(mask is None for mask in kept):
        return None
    return [mask for mask in kept if mask is not None]


def _task_batch(rounds: Sequence[EpisodeBatch], task: int, kept: np.ndarray) -> EpisodeBatch:
    """Task ``task``'s kept episodes from every round, round by round, as one batch."""
    parts = []
    for batch, row in zip(rounds, kept, strict=True):
        cols = torch.as_tensor(np.flatnonzero(row))
        if cols.numel():
            parts.append(batch.task(task).episodes(cols))
    return concat_episodes(parts)
