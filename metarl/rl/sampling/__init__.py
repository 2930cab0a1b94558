"""On-policy sampling: every task x episode advances together on one Gymnasium vector env.

Sub-env ``n`` runs task ``n // episodes_per_task`` for exactly one episode per call, so
Gymnasium's autoreset never splices two episodes together: a sub-env that has ended is masked
until the slowest episode ends (or the horizon is reached), and its autoreset step is ignored.
One batched policy forward per time step picks the actions of all sub-envs; no gradients are
kept. In the ``local`` and ``processes`` backends (:class:`Sampler`) the policy never leaves
this process (worker processes only step envs); the ``ray`` backend
(:class:`metarl.rl.sampling.ray.RaySampler`) runs one such rollout per actor on its slice of the
tasks. A call's randomness is drawn up front (:class:`RolloutDraws`), so all backends give the
same episodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metarl.config import SamplerConfig
from metarl.rl.sampling.base import EpisodeSampler, RolloutDraws
from metarl.rl.sampling.local import Sampler

__all__ = ["EpisodeSampler", "RolloutDraws", "Sampler", "make_sampler"]


def make_sampler(
    config: SamplerConfig,
    *,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    num_tasks: int,
    episodes_per_task: int,
    horizon: int,
    oracle: bool = False,
    normalize_actions: bool = False,
) -> EpisodeSampler:
    """The sampler of ``config.backend``; the caller does not need to know which runs."""
    if config.backend == "ray":
        from metarl.rl.sampling.ray import RaySampler

        return RaySampler(
            env_id=env_id,
            env_kwargs=env_kwargs,
            num_tasks=num_tasks,
            episodes_per_task=episodes_per_task,
            horizon=horizon,
            num_workers=config.num_workers,
            oracle=oracle,
            normalize_actions=normalize_actions,
            address=config.ray_address,
            timeout_s=config.ray_timeout_s,
            max_retries=config.ray_max_retries,
        )
    return Sampler(
        env_id=env_id,
        env_kwargs=env_kwargs,
        num_tasks=num_tasks,
        episodes_per_task=episodes_per_task,
        horizon=horizon,
        backend=config.backend,
        num_workers=config.num_workers,
        oracle=oracle,
        normalize_actions=normalize_actions,
    )
