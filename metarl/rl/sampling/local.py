"""The ``local`` and ``processes`` backends: one vector env over all sub-envs of a call, the
policy in this process (:class:`Sampler`); worker processes, if any, only step envs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from metarl.rl.episodes import EpisodeBatch
from metarl.rl.policies import Params, Policy
from metarl.rl.sampling.base import EpisodeSampler, RolloutDraws
from metarl.rl.sampling.envs import Backend, make_vector_env
from metarl.rl.sampling.processes import step_active


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Act with one intra-op thread whatever the caller runs with (``learner_threads``): a
    product split over threads may round otherwise, and every backend must act alike."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _placed(x: Tensor, rows: slice, total: int) -> Tensor:
    """A fresh ``[total, ...]`` tensor holding ``x`` at ``rows``, zeros elsewhere."""
    out = x.new_empty((total, *x.shape[1:]))
    out[rows] = x
    out[: rows.start].zero_()
    out[rows.stop :].zero_()
    return out


@dataclass
class _Buffers:
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    log_probs: np.ndarray
    mask: np.ndarray


class Sampler(EpisodeSampler):
    """The ``local`` and ``processes`` backends: one vector env over all sub-envs, the policy
    in this process.

    How it acts (what makes every backend's episodes bitwise equal, by construction): the
    sampler's tasks are tasks ``[task_offset, task_offset + num_tasks)`` of a meta-batch of
    ``meta_batch_tasks``; every step makes one policy call of the whole meta-batch's shape
    (``[meta_batch_tasks * episodes_per_task, obs_dim]``, per-task weights ``[meta_batch_tasks,
    ...]``) on freshly allocated tensors, in one torch thread, with this sampler's rows at the
    tasks' own place and zeros elsewhere. A Ray actor that owns a slice of the tasks thus makes
    exactly the call the local sampler makes for all of them: the same kernels (BLAS picks
    them by shape, alignment and thread count, and rounds differently for other row counts on
    some CPUs), each task's rows at the same position; an output row depends only on its own
    inputs, so the other tasks' rows (zeros here, real there) change nothing in it. The cost:
    each Ray actor runs the whole meta-batch's forward (cheap next to stepping its envs).
    """

    def __init__(
        self,
        *,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None = None,
        num_tasks: int,
        episodes_per_task: int,
        horizon: int,
        backend: Backend = "local",
        num_workers: int = 2,
        oracle: bool = False,
        normalize_actions: bool = False,
        task_offset: int = 0,
        meta_batch_tasks: int | None = None,
        worker_timeout_s: float = 300.0,
    ) -> None:
        """``worker_timeout_s``: with ``backend="processes"``, the longest one env call waits
        for a worker (a stopped or hung one then ends the run with a
        :class:`~metarl.errors.SamplerError` naming it)."""
        super().__init__(
            env_id=env_id, num_tasks=num_tasks, episodes_per_task=episodes_per_task, horizon=horizon
        )
        self.task_offset = task_offset
        """The meta-batch index of this sampler's first task (a Ray actor's slice starts there)."""
        self.meta_batch_tasks = num_tasks if meta_batch_tasks is None else meta_batch_tasks
        """Tasks in the whole meta-batch: the policy acts on its shape (see the class doc)."""
        if not 0 <= task_offset <= self.meta_batch_tasks - num_tasks:
            raise ValueError(
                f"Sampler: tasks {task_offset}..{task_offset + num_tasks - 1} are not inside "
                f"a meta-batch of {self.meta_batch_tasks}"
            )
        self.envs = make_vector_env(
            env_id,
            self.num_envs,
            env_kwargs=env_kwargs,
            backend=backend,
            num_workers=num_workers,
            oracle=oracle,
            normalize_actions=normalize_actions,
            worker_timeout_s=worker_timeout_s,
        )
        space = self.envs.single_action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.low = None if self.discrete else np.asarray(space.low)  # type: ignore[attr-defined]
        self.high = None if self.discrete else np.asarray(space.high)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.envs.close()

    def rollout(
        self,
        policy: Policy,
        params: Params,
        tasks: Sequence[Any],
        draws: RolloutDraws,
        *,
        per_task_params: bool = False,
    ) -> EpisodeBatch:
        """Steps every sub-env with the policy (what a Ray worker runs on its slice)."""
        if len(tasks) != self.num_tasks or len(draws.reset_seeds) != self.num_envs:
            raise ValueError(
                f"Sampler built for {self.num_tasks} tasks x {self.episodes_per_task} episodes, "
                f"got {len(tasks)} tasks and {len(draws.reset_seeds)} reset seeds"
            )
        per_env = [t for t in tasks for _ in range(self.episodes_per_task)]
        self.envs.set_attr("task", per_env)  # type: ignore[attr-defined]
        seeds: Any = list(draws.reset_seeds)  # one per sub-env (typed int | None upstream)
        obs, _ = self.envs.reset(seed=seeds)
        with _one_torch_thread():
            weights = self._acting_weights(params, per_task_params)
            return self._rollout(policy, weights, np.asarray(obs), draws.noise, per_task_params)

    def _acting_weights(self, params: Params, per_task: bool) -> Params:
        """Fresh copies of the weights (same alignment on every backend, whatever ``params``
        are views of); per-task weights placed at the tasks' rows of a meta-batch-sized
        stack."""
        if not per_task:
            return {k: v.detach().clone() for k, v in params.items()}
        rows = slice(self.task_offset, self.task_offset + self.num_tasks)
        full = {}
        for k, v in params.items():
            if v.shape[0] != self.num_tasks:
                raise ValueError(
                    f"per-task weights {k!r} have {v.shape[0]} tasks, the sampler {self.num_tasks}"
                )
            full[k] = v.new_zeros((self.meta_batch_tasks, *v.shape[1:]))
            full[k][rows] = v.detach()
        return full

    def _act(
        self, policy: Policy, params: Params, obs: np.ndarray, noise: Tensor, per_task: bool
    ) -> tuple[Tensor, Tensor]:
        """One policy call of the meta-batch's shape, this sampler's rows at their place."""
        k, e = self.meta_batch_tasks, self.episodes_per_task
        rows = slice(self.task_offset * e, (self.task_offset + self.num_tasks) * e)
        x = _placed(torch.as_tensor(obs, dtype=torch.float32), rows, k * e)
        eps = _placed(noise, rows, k * e)
        if per_task:
            actions, log_probs = policy.act_per_task(
                params, x.reshape(k, e, *x.shape[1:]), eps.reshape(k, e, *eps.shape[1:])
            )
            actions, log_probs = actions.flatten(0, 1), log_probs.flatten(0, 1)
        else:
            actions, log_probs = policy.act(params, x, eps)
        return actions[rows], log_probs[rows]

    def _rollout(
        self,
        policy: Policy,
        params: Params,
        obs: np.ndarray,
        noise: Tensor,
        per_task: bool,
    ) -> EpisodeBatch:
        n, h = self.num_envs, self.horizon
        buf: _Buffers | None = None
        alive = np.ones(n, dtype=bool)
        lengths = np.zeros(n, dtype=np.int64)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        last_obs = np.zeros_like(obs, dtype=np.float32)
        for t in range(h):
            actions, log_probs = self._act(policy, params, obs, noise[t], per_task)
            act = actions.numpy()
            if buf is None:
                buf = _new_buffers(h, obs, act)
            buf.obs[t], buf.actions[t], buf.log_probs[t], buf.mask[t] = obs, act, log_probs, alive
            env_act = act if self.discrete else np.clip(act, self.low, self.high)
            obs, rew, term, trunc, _ = step_active(self.envs, env_act, alive)
            _check_finite(obs, rew, t)
            buf.rewards[t] = np.where(alive, rew, 0.0)
            ended = alive & (term | trunc)
            terminated |= ended & term
            truncated |= ended & trunc & ~term
            last_obs[alive] = obs[alive]
            lengths += alive
            alive &= ~ended
            if not alive.any():
                break
        if t == h - 1 and alive.any():
            truncated |= alive  # the sampler's horizon cut them: a time-limit end
        assert buf is not None
        return _to_batch(
            buf,
            t + 1,
            lengths,
            terminated,
            truncated,
            last_obs,
            self.num_tasks,
            self.episodes_per_task,
        )


def _new_buffers(h: int, obs: np.ndarray, act: np.ndarray) -> _Buffers:
    n = obs.shape[0]
    return _Buffers(
        obs=np.zeros((h, *obs.shape), dtype=np.float32),
        actions=np.zeros((h, *act.shape), dtype=act.dtype),
        rewards=np.zeros((h, n), dtype=np.float32),
        log_probs=np.zeros((h, n), dtype=np.float32),
        mask=np.zeros((h, n), dtype=np.float32),
    )


def _check_finite(obs: np.ndarray, rew: np.ndarray, t: int) -> None:
    if not (np.isfinite(obs).all() and np.isfinite(rew).all()):
        raise FloatingPointError(f"sampler: non-finite observation or reward at step {t}")


def _to_batch(
    buf: _Buffers,
    steps: int,
    lengths: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    last_obs: np.ndarray,
    num_tasks: int,
    episodes_per_task: int,
) -> EpisodeBatch:
    alive = buf.mask[:steps] > 0

    def cut(x: np.ndarray) -> Tensor:
        """The first ``steps`` rows, zero after each episode's end (what the env did after it
        is no data, and zeros make batches of any split of the sub-envs line up)."""
        x = x[:steps]
        keep = alive.reshape(alive.shape + (1,) * (x.ndim - 2))
        return torch.from_numpy(np.where(keep, x, np.zeros((), dtype=x.dtype)))

    return EpisodeBatch(
        observations=cut(buf.obs),
        actions=cut(buf.actions),
        rewards=cut(buf.rewards),
        mask=cut(buf.mask),
        lengths=torch.from_numpy(lengths),
        terminated=torch.from_numpy(terminated),
        truncated=torch.from_numpy(truncated),
        last_observations=torch.from_numpy(last_obs),
        log_probs=cut(buf.log_probs),
        num_tasks=num_tasks,
        episodes_per_task=episodes_per_task,
    )
