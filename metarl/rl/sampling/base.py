"""What every sampling backend shares: :class:`EpisodeSampler` (the interface the learners
use) and :class:`RolloutDraws` (a call's randomness, drawn before any env steps, so that every
backend and every split of the sub-envs gives the same episodes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from metarl.rl.episodes import EpisodeBatch
from metarl.rl.policies import Params, Policy


class EpisodeSampler:
    """What every backend shares: the sizes, :meth:`sample` (draw the call's randomness, then
    :meth:`rollout`), and closing. The learners use only this interface."""

    def __init__(
        self, *, env_id: str, num_tasks: int, episodes_per_task: int, horizon: int
    ) -> None:
        if num_tasks < 1 or episodes_per_task < 1 or horizon < 1:
            raise ValueError("Sampler: num_tasks, episodes_per_task and horizon must be >= 1")
        self.env_id = env_id
        self.num_tasks = num_tasks
        self.episodes_per_task = episodes_per_task
        self.num_envs = num_tasks * episodes_per_task
        self.horizon = horizon

    def sample(
        self,
        policy: Policy,
        params: Params,
        tasks: Sequence[Any],
        *,
        generator: torch.Generator,
        seed: int,
        per_task_params: bool = False,
    ) -> EpisodeBatch:
        """One episode per sub-env, ``episodes_per_task`` per task, acting with ``params``.

        ``per_task_params``: ``params`` carry a leading task axis (adapted ``theta_i``), so
        task ``k``'s episodes act with ``params[...][k]``. ``seed`` seeds the sub-envs' resets;
        ``generator`` draws the actions. Same seeds, same episodes, on every backend.
        """
        if len(tasks) != self.num_tasks:
            raise ValueError(f"Sampler built for {self.num_tasks} tasks, got {len(tasks)}")
        draws = RolloutDraws.draw(policy, self.num_envs, self.horizon, generator, seed)
        return self.rollout(policy, params, tasks, draws, per_task_params=per_task_params)

    def rollout(
        self,
        policy: Policy,
        params: Params,
        tasks: Sequence[Any],
        draws: RolloutDraws,
        *,
        per_task_params: bool = False,
    ) -> EpisodeBatch:
        """:meth:`sample` with its randomness given: the episodes are a function of the
        arguments alone."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RolloutDraws:
    """All the randomness of one :meth:`Sampler.sample` call, drawn before any env steps:
    a reset seed per sub-env and the action noise of every step (``[horizon, num_envs, ...]``,
    from :meth:`Policy.draw_noise`). Sub-env ``n`` uses ``reset_seeds[n]`` and
    ``noise[:, n]`` whoever steps it, so every split of the sub-envs gives the same episodes."""

    reset_seeds: tuple[int, ...]
    noise: Tensor

    @staticmethod
    def draw(
        policy: Policy, num_envs: int, horizon: int, generator: torch.Generator, seed: int
    ) -> RolloutDraws:
        seeds = np.random.SeedSequence(seed).generate_state(num_envs).tolist()
        return RolloutDraws(
            reset_seeds=tuple(int(s) % (2**31) for s in seeds),
            noise=policy.draw_noise((horizon, num_envs), generator),
        )

    def slice(self, start: int, stop: int) -> RolloutDraws:
        """The draws of sub-envs ``[start, stop)``."""
        return RolloutDraws(self.reset_seeds[start:stop], self.noise[:, start:stop].clone())
