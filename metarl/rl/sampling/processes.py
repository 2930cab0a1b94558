"""A Gymnasium vector env whose sub-envs are split into shards, one worker process per shard.

Gymnasium's ``AsyncVectorEnv`` runs one process per sub-env; meta-RL steps hundreds of sub-envs
at once (tasks x episodes), so here each worker owns a ``SyncVectorEnv`` over a contiguous slice
and one message per step moves a whole slice of actions and results. Workers only step envs:
no gradients, no torch, no locks; they run one BLAS/OpenMP thread.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from metarl.errors import SamplerError

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
        return self.step_active(actions, np.ones(self.num_envs, dtype=bool))

    def step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """:meth:`step` for the sub-envs where ``active`` is true; the others are left as they
        are (not stepped, not autoreset), their rows of the result their last observation,
        reward 0 and both end flags false."""
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.num_envs,):
            raise ValueError(f"step_active: active must have shape ({self.num_envs},)")
        for i in np.flatnonzero(active):
            env = self.envs[i]
            if self._autoreset[i]:
                self._obs[i], _ = env.reset()
                self._rewards[i], self._terminated[i], self._truncated[i] = 0.0, False, False
            else:
                self._obs[i], self._rewards[i], self._terminated[i], self._truncated[i], _ = (
                    env.step(actions[i])
                )
        self._autoreset[active] = (self._terminated | self._truncated)[active]
        return (
            self._obs.copy(),
            np.where(active, self._rewards, 0.0),
            self._terminated & active,
            self._truncated & active,
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


StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]
"""A vector env's step: observations, rewards, terminated, truncated, info."""


def step_active(envs: Any, actions: np.ndarray, active: np.ndarray) -> StepResult:
    """Step the sub-envs of ``envs`` where ``active`` is true: through the vector env's own
    ``step_active`` where it has one (its other sub-envs are then left as they are), else a
    plain ``step`` of every sub-env. Either way the active sub-envs' rows are the same; a
    sampler ignores the others' (the sub-envs whose episode has ended)."""
    own = getattr(envs, "step_active", None)
    result: StepResult = envs.step(actions) if own is None else own(actions, active)
    return result


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


_PARENT_CHECK_S = 1.0
"""How often an idle worker checks that the process that started it is still alive."""

_CLOSE_WAIT_S = 5.0
"""How long :meth:`ShardedVectorEnv.close` waits for the workers to exit before killing them."""


def _worker(
    remote: Connection,
    make_shard: ShardFn,
    start: int,
    stop: int,
    inherited: Sequence[Connection],
) -> None:
    """Serve one shard until told to close, the pipe closes, or the parent dies.

    ``inherited``: the parent's ends of the workers' pipes (this worker's own too), which a
    forked child holds copies of; closed at once, so that the parent's death closes every pipe
    and each worker reads EOF. Ctrl-C is the parent's to handle (it closes the workers), so a
    terminal's SIGINT does not print a traceback from every worker. SIGTERM kills a worker as
    it kills any process: a Python handler the parent had (Ray's driver installs one that calls
    sys.exit) is not inherited."""
    parent_pid = os.getppid()  # the trainer (fork, spawn) or the forkserver, which dies with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for conn in inherited:
        conn.close()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        envs: Any = make_shard(start, stop)  # a VectorEnv with set_attr/get_attr (untyped)
    except Exception as err:
        _send_quietly(remote, ("error", _error_report(err)))
        return
    try:
        _serve(remote, envs, parent_pid)
    finally:
        envs.close()


def _serve(remote: Connection, envs: Any, parent_pid: int) -> None:
    while True:
        try:
            if not remote.poll(_PARENT_CHECK_S):
                if os.getppid() != parent_pid:
                    return  # the parent died (its pipe end may live on in another process)
                continue
            cmd, data = remote.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died: nobody to answer
        try:
            if cmd == "close":
                return
            if cmd == "step":
                obs, rew, term, trunc, _ = step_active(envs, *data)
                result: Any = (obs, rew, term, trunc)
            elif cmd == "reset":
                result, _ = envs.reset(seed=data)
            elif cmd == "set_attr":
                result = envs.set_attr(*data)
            elif cmd == "get_attr":
                result = envs.get_attr(data)
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as err:  # the env's failure goes to the parent, which reports it
            _send_quietly(remote, ("error", _error_report(err)))
            return
        if not _send_quietly(remote, ("ok", result)):
            return


def _error_report(err: BaseException) -> tuple[str, str]:
    """``("Type: first line of the message", the whole traceback)`` of the exception being
    handled."""
    return _summary(err), traceback.format_exc()


def _summary(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    more = " ..." if len(lines) > 1 else ""
    return f"{type(err).__name__}: {lines[0]}{more}" if lines else type(err).__name__


def _send_quietly(remote: Connection, message: tuple[str, Any]) -> bool:
    """Send ``message``; False when the parent is gone (nothing to report it to)."""
    try:
        remote.send(message)
    except (BrokenPipeError, ConnectionError, EOFError, OSError):
        return False
    return True


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a sampler worker process, as text: the
    ``__cause__`` of the :class:`~metarl.errors.SamplerError` that reports it in one line."""


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
    vector env.

    Failures end in one :class:`~metarl.errors.SamplerError` naming the worker (index, pid,
    sub-envs) and what happened: it died (exit code or signal), raised (the exception's last
    line; the whole worker traceback is the error's ``__cause__``, a :class:`WorkerTraceback`),
    or did not answer within ``timeout_s`` (stopped or hung; it is killed). After one, every
    worker is closed. Workers never outlive the parent: they exit when its pipe closes or it
    dies (checked every second while idle), whatever signal ended it.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(
        self,
        make_shard: ShardFn,
        num_envs: int,
        *,
        num_workers: int = 2,
        context: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        """``timeout_s``: the longest one call (step, reset, set_attr, get_attr) waits for all
        workers' answers before it kills them and raises (a worker stopped by SIGSTOP, or an
        env stuck in a step); ``context``: the multiprocessing start method (default fork where
        the platform has it, else spawn)."""
        if not timeout_s > 0:
            raise ValueError(f"ShardedVectorEnv: timeout_s must be > 0, got {timeout_s}")
        self.num_envs = num_envs
        self.timeout_s = float(timeout_s)
        self.bounds = shard_bounds(self.num_envs, num_workers)
        probe = make_shard(0, 1)
        self.single_observation_space = probe.single_observation_space
        self.single_action_space = probe.single_action_space
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.remotes: list[Connection] = []
        self.processes: list[Any] = []
        try:
            self._start(make_shard, context)
        except BaseException:
            self.close()
            raise

    def _start(self, make_shard: ShardFn, context: str | None) -> None:
        # fork where the platform has it: fast, and a user's script needs no __main__ guard
        default = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx: Any = mp.get_context(context or default)
        forked = ctx.get_start_method() == "fork"  # only a forked child holds our pipe ends
        for start, stop in self.bounds:
            parent, child = ctx.Pipe()
            inherited = [*self.remotes, parent] if forked else []
            proc = ctx.Process(
                target=_worker,
                args=(child, make_shard, start, stop, inherited),
                daemon=True,
            )
            self.remotes.append(parent)
            proc.start()
            child.close()
            self.processes.append(proc)

    # -- calls and their failures

    def _call(self, cmd: str, payloads: Sequence[Any]) -> list[Any]:
        """Send worker ``i`` ``(cmd, payloads[i])``, then gather every answer within
        ``timeout_s``."""
        if self.closed or not self.remotes:
            raise SamplerError(f"processes sampler: {cmd} after close (or a failed worker)")
        for i, (remote, data) in enumerate(zip(self.remotes, payloads, strict=True)):
            try:
                remote.send((cmd, data))
            except (BrokenPipeError, ConnectionError, EOFError, OSError):
                self._fail(i, cmd, self._pending_error(i) or self._death(i))
            except Exception as err:  # e.g. a task that cannot be pickled
                self._fail(i, cmd, f"could not be sent its data: {_summary(err)}", err)
        deadline = time.monotonic() + self.timeout_s
        return [self._answer(i, cmd, deadline) for i in range(len(self.remotes))]

    def _answer(self, i: int, cmd: str, deadline: float) -> Any:
        remote, proc = self.remotes[i], self.processes[i]
        while not remote.poll(0):  # true also at EOF
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(i, cmd, self._no_answer(i))
            ready = mp_wait([remote, proc.sentinel], timeout=left)
            if proc.sentinel in ready and not remote.poll(0):
                self._fail(i, cmd, self._death(i))
        try:
            status, payload = remote.recv()
        except (EOFError, OSError):
            self._fail(i, cmd, self._death(i))
        if status == "error":
            summary, text = payload
            self._fail(i, cmd, f"raised {summary}", WorkerTraceback(text))
        return payload

    def _pending_error(self, i: int) -> str | None:
        """The error a worker sent before it exited (e.g. its shard failed to build)."""
        with contextlib.suppress(Exception):
            if self.remotes[i].poll(0):
                status, payload = self.remotes[i].recv()
                if status == "error":
                    return f"raised {payload[0]}"
        return None

    def _death(self, i: int) -> str:
        proc = self.processes[i]
        proc.join(timeout=2.0)  # the pipe closes a moment before the exit code is known
        code = proc.exitcode
        if code is None:
            return "closed its pipe but is still running"
        if code < 0:
            name = _signal_name(-code)
            hint = " (the kernel's out-of-memory killer?)" if -code == signal.SIGKILL else ""
            return f"was killed by {name}{hint}"
        return f"exited with code {code}"

    def _no_answer(self, i: int) -> str:
        state = _process_state(self.processes[i].pid)
        self.processes[i].kill()
        why = "it is stopped (SIGSTOP?)" if state in ("T", "t") else "hung in its env?"
        return f"did not answer within timeout_s={self.timeout_s:g} s ({why}); killed"

    def _fail(self, i: int, cmd: str, what: str, cause: BaseException | None = None) -> NoReturn:
        a, b = self.bounds[i]
        pid = self.processes[i].pid
        message = f"processes sampler: worker {i} (pid {pid}, sub-envs {a}..{b - 1}) {what} "
        self.close()
        raise SamplerError(message + f"during {cmd}") from cause

    # -- the vector env interface

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if options:
            raise ValueError("ShardedVectorEnv.reset does not take options")
        seeds = _seeds(seed, self.num_envs)
        return np.concatenate(self._call("reset", [seeds[a:b] for a, b in self.bounds])), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return self.step_active(actions, np.ones(self.num_envs, dtype=bool))

    def step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """:meth:`step` for the sub-envs where ``active`` is true (:func:`step_active` on each
        worker's slice)."""
        active = np.asarray(active, dtype=bool)
        payloads = [(actions[a:b], active[a:b]) for a, b in self.bounds]
        parts = self._call("step", payloads)
        obs, rew, term, trunc = (np.concatenate(x) for x in zip(*parts, strict=True))
        return obs, rew, term, trunc, {}

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        """Set ``name`` on every sub-env, one value each (e.g. ``"task"``)."""
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr: {len(values)} values for {self.num_envs} envs")
        self._call("set_attr", [(name, list(values[a:b])) for a, b in self.bounds])

    def get_attr(self, name: str) -> tuple[Any, ...]:
        parts = self._call("get_attr", [name] * len(self.remotes))
        return tuple(v for part in parts for v in part)

    def close_extras(self, **kwargs: Any) -> None:
        """Ask every worker to exit, wait up to a few seconds, kill those still running (a
        stopped or hung one)."""
        for remote in self.remotes:
            with contextlib.suppress(Exception):
                remote.send(("close", None))
        deadline = time.monotonic() + _CLOSE_WAIT_S
        for proc in self.processes:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()  # SIGKILL: a stopped process takes no SIGTERM until continued
                proc.join(timeout=_CLOSE_WAIT_S)
        for remote in self.remotes:
            remote.close()
        self.remotes, self.processes = [], []


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _process_state(pid: int | None) -> str:
    """The one-letter state in ``/proc/<pid>/stat`` (``T``: stopped), ``?`` elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"
