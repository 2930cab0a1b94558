"""A Gymnasium vector env whose sub-envs are split into shards, one worker process per shard.

Gymnasium's ``AsyncVectorEnv`` runs one process per sub-env; meta-RL steps hundreds of sub-envs
at once (tasks x episodes), so here each worker owns a ``SyncVectorEnv`` over a contiguous slice
and one message per step moves a whole slice of actions and results. Workers only step envs:
no gradients, no torch, no locks; they run one BLAS/OpenMP thread.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

EnvFn = Callable[[], gym.Env[Any, Any]]
ShardFn = Callable[[int, int], VectorEnv[Any, Any, Any]]
"""Builds the vector env of sub-envs ``[start, stop)`` (in a worker process); picklable."""


class SerialVectorEnv(VectorEnv[Any, Any, Any]):
    """Sub-envs stepped one after another in this process (NEXT_STEP autoreset).

    Like Gymnasium's ``SyncVectorEnv`` but the sub-envs' ``info`` dicts are dropped instead of
    merged: merging them per step costs about a quarter of a MuJoCo step, and the sampler needs
    only observations, rewards and the two end flags.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, env_fns: Sequence[EnvFn]) -> None:
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs = np.zeros(
            (self.num_envs, *(self.single_observation_space.shape or ())),
            dtype=self.single_observation_space.dtype,
        )
        self._rewards = np.zeros(self.num_envs)
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        for i, (env, s) in enumerate(zip(self.envs, _seeds(seed, self.num_envs), strict=True)):
            self._obs[i], _ = env.reset(seed=s, options=options)
        self._autoreset[:] = False
        return self._obs.copy(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        for i, env in enumerate(self.envs):
            if self._autoreset[i]:
                self._obs[i], _ = env.reset()
                self._rewards[i], self._terminated[i], self._truncated[i] = 0.0, False, False
            else:
                self._obs[i], self._rewards[i], self._terminated[i], self._truncated[i], _ = (
                    env.step(actions[i])
                )
        self._autoreset[:] = self._terminated | self._truncated
        return (
            self._obs.copy(),
            self._rewards.copy(),
            self._terminated.copy(),
            self._truncated.copy(),
            {},
        )

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        """Set ``name`` on every sub-env, one value each (e.g. ``"task"``)."""
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr: {len(values)} values for {self.num_envs} envs")
        for env, value in zip(self.envs, values, strict=True):
            env.set_wrapper_attr(name, value)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(env.get_wrapper_attr(name) for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def serial_shards(env_fns: Sequence[EnvFn]) -> ShardFn:
    """Shards of :class:`SerialVectorEnv` over slices of ``env_fns``."""
    return functools.partial(_serial_shard, tuple(env_fns))


def _serial_shard(env_fns: Sequence[EnvFn], start: int, stop: int) -> SerialVectorEnv:
    return SerialVectorEnv(env_fns[start:stop])


def _seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    """One reset seed per sub-env, as Gymnasium's vector envs take them."""
    if seed is None:
        return [None] * n
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"reset: {len(seeds)} seeds for {n} sub-envs")
    return seeds


def _worker(remote: Connection, make_shard: ShardFn, start: int, stop: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    envs: Any = make_shard(start, stop)  # a VectorEnv with set_attr/get_attr (untyped upstream)
    try:
        while True:
            cmd, data = remote.recv()
            if cmd == "step":
                obs, rew, term, trunc, _ = envs.step(data)
                remote.send(("ok", (obs, rew, term, trunc)))
            elif cmd == "reset":
                obs, _ = envs.reset(seed=data)
                remote.send(("ok", obs))
            elif cmd == "set_attr":
                envs.set_attr(*data)
                remote.send(("ok", None))
            elif cmd == "get_attr":
                remote.send(("ok", envs.get_attr(data)))
            elif cmd == "close":
                remote.send(("ok", None))
                break
    except Exception:  # report any failure to the parent instead of dying silently
        remote.send(("error", traceback.format_exc()))
    finally:
        envs.close()


def shard_bounds(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` slices, as even as possible, one per worker."""
    if num_workers < 1 or num_envs < num_workers:
        raise ValueError(f"need 1 <= num_workers <= num_envs, got {num_workers} for {num_envs}")
    sizes = [num_envs // num_workers + (i < num_envs % num_workers) for i in range(num_workers)]
    starts = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in itertools.pairwise(starts)]


class ShardedVectorEnv(VectorEnv[Any, Any, Any]):
    """``num_envs`` sub-envs stepped by ``num_workers`` processes (NEXT_STEP autoreset).

    Worker ``w`` builds ``make_shard(start, stop)`` for its contiguous slice: a
    :class:`SerialVectorEnv` of single envs (:func:`serial_shards`) or an env's own batched
    vector env."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        make_shard: ShardFn,
        num_envs: int,
        *,
        num_workers: int = 2,
        context: str | None = None,
    ) -> None:
        self.num_envs = num_envs
        self.bounds = shard_bounds(self.num_envs, num_workers)
        probe = make_shard(0, 1)
        self.single_observation_space = probe.single_observation_space
        self.single_action_space = probe.single_action_space
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        # fork where the platform has it: fast, and a user's script needs no __main__ guard
        default = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx: Any = mp.get_context(context or default)
        self.remotes: list[Connection] = []
        self.processes = []
        for start, stop in self.bounds:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, make_shard, start, stop), daemon=True)
            proc.start()
            child.close()
            self.remotes.append(parent)
            self.processes.append(proc)

    def _gather(self) -> list[Any]:
        results = []
        for i, remote in enumerate(self.remotes):
            try:
                status, payload = remote.recv()
            except (EOFError, OSError):
                code = self.processes[i].exitcode
                self.close()
                raise RuntimeError(f"ShardedVectorEnv worker {i} died (exit code {code})") from None
            if status == "error":
                self.close()
                raise RuntimeError(f"ShardedVectorEnv worker {i} failed:\n{payload}")
            results.append(payload)
        return results

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError("ShardedVectorEnv.reset does not take options")
        seeds = _seeds(seed, self.num_envs)
        for remote, (a, b) in zip(self.remotes, self.bounds, strict=True):
            remote.send(("reset", seeds[a:b]))
        return np.concatenate(self._gather()), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        for remote, (a, b) in zip(self.remotes, self.bounds, strict=True):
            remote.send(("step", actions[a:b]))
        parts = self._gather()
        obs, rew, term, trunc = (np.concatenate(x) for x in zip(*parts, strict=True))
        return obs, rew, term, trunc, {}

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        """Set ``name`` on every sub-env, one value each (e.g. ``"task"``)."""
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr: {len(values)} values for {self.num_envs} envs")
        for remote, (a, b) in zip(self.remotes, self.bounds, strict=True):
            remote.send(("set_attr", (name, list(values[a:b]))))
        self._gather()

    def get_attr(self, name: str) -> tuple[Any, ...]:
        for remote in self.remotes:
            remote.send(("get_attr", name))
        return tuple(v for part in self._gather() for v in part)

    def close_extras(self, **kwargs: Any) -> None:
        for remote in self.remotes:
            try:
                remote.send(("close", None))
                remote.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        for proc in self.processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self.remotes, self.processes = [], []
