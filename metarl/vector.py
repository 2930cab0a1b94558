"""A Gymnasium vector env whose sub-envs are split into shards, one worker process per shard.

Gymnasium's ``AsyncVectorEnv`` runs one process per sub-env; meta-RL steps hundreds of sub-envs
at once (tasks x episodes), so here each worker owns a ``SyncVectorEnv`` over a contiguous slice
and one message per step moves a whole slice of actions and results. Workers only step envs:
no gradients, no torch, no locks; they run one BLAS/OpenMP thread.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space

EnvFn = Callable[[], gym.Env[Any, Any]]


def _worker(remote: Connection, env_fns: Sequence[EnvFn]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    envs = SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.NEXT_STEP)
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
    """``num_envs`` sub-envs stepped by ``num_workers`` processes (NEXT_STEP autoreset)."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self, env_fns: Sequence[EnvFn], *, num_workers: int = 2, context: str = "spawn"
    ) -> None:
        self.num_envs = len(env_fns)
        self.bounds = shard_bounds(self.num_envs, num_workers)
        probe = env_fns[0]()
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        ctx: Any = mp.get_context(context)
        self.remotes: list[Connection] = []
        self.processes = []
        for start, stop in self.bounds:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, list(env_fns[start:stop])), daemon=True)
            proc.start()
            child.close()
            self.remotes.append(parent)
            self.processes.append(proc)

    def _gather(self) -> list[Any]:
        results = []
        for i, remote in enumerate(self.remotes):
            status, payload = remote.recv()
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
        seeds: list[int | None]
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
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
