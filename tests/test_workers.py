"""The ``processes`` backend's workers (ShardedVectorEnv) with real processes and signals: every
failure is one SamplerError naming the worker, nothing hangs, no worker outlives its parent.

Every test that waits on a process is bounded: by the env's own ``timeout_s``, by
``subprocess`` timeouts, and by an alarm (``bounded``) that fails the test instead of hanging
the suite if a wait were ever unbounded.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from metarl.errors import SamplerError, StepError
from metarl.rl.sampling import processes
from metarl.rl.sampling.processes import (
    SerialVectorEnv,
    ShardedVectorEnv,
    WorkerTraceback,
    serial_shards,
)

pytestmark = pytest.mark.skipif(
    "fork" not in __import__("multiprocessing").get_all_start_methods() or sys.platform != "linux",
    reason="signals, /proc and fork: Linux",
)

DIE, RAISE, HANG = 1000.0, 2000.0, 3000.0
"""Actions that make a sub-env's step exit the worker with code 3, raise, or sleep for an hour."""


class CommandEnv(gym.Env[np.ndarray, np.ndarray]):
    """Observation = the last action; some actions (DIE, RAISE, HANG) misbehave."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> Any:
        a = float(action[0])
        if a == DIE:
            os._exit(3)
        if a == RAISE:
            raise ValueError(f"bad action {a:g}\nsecond line of the message")
        if a == HANG:
            time.sleep(3600)
        return np.array([a], np.float32), 0.0, False, False, {}


def _shard_failing_beyond_the_first(start: int, stop: int) -> SerialVectorEnv:
    if start > 0:
        raise RuntimeError(f"no shard {start}..{stop - 1} here")
    return SerialVectorEnv([CommandEnv] * (stop - start))


@pytest.fixture
def bounded() -> Iterator[None]:
    """Fail (not hang) a test still running after 60 s."""

    def expire(*_: object) -> None:
        raise TimeoutError("test still running after 60 s: a wait without a bound")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _envs(**kwargs: Any) -> ShardedVectorEnv:
    """4 sub-envs on 2 workers: worker 0 steps 0..1, worker 1 steps 2..3."""
    envs = ShardedVectorEnv(serial_shards([CommandEnv] * 4), 4, num_workers=2, **kwargs)
    envs.reset(seed=0)
    return envs


def _actions(value: float, at: int = 3) -> np.ndarray:
    actions = np.zeros((4, 1), np.float32)
    actions[at] = value
    return actions


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_gone(pids: list[int], within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_healthy_run_steps_and_closes(bounded: None) -> None:
    envs = _envs()
    pids = [p.pid for p in envs.processes]
    obs, *_ = envs.step(np.arange(4, dtype=np.float32).reshape(4, 1))
    assert obs[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    envs.close()
    assert _wait_gone(pids, 5)


def test_worker_raising_in_step_is_one_line_naming_it(bounded: None) -> None:
    envs = _envs()
    pids = [p.pid for p in envs.processes]
    with pytest.raises(SamplerError) as info:
        envs.step(_actions(RAISE))
    assert str(info.value) == (
        f"processes sampler: worker 1 (pid {pids[1]}, sub-envs 2..3) raised "
        "ValueError: bad action 2000 ... during step"
    )
    assert isinstance(info.value, StepError)  # the trainer's one-line error, exit code 2
    cause = info.value.__cause__
    assert isinstance(cause, WorkerTraceback) and "Traceback" in str(cause)
    assert "ValueError: bad action 2000" in str(cause)
    assert _wait_gone(pids, 10)  # every worker closed after a failure
    with pytest.raises(SamplerError, match="after close"):
        envs.step(_actions(0.0))


def test_worker_exiting_mid_step_gives_its_exit_code(bounded: None) -> None:
    envs = _envs()
    pid = envs.processes[1].pid
    with pytest.raises(
        SamplerError,
        match=rf"^processes sampler: worker 1 \(pid {pid}, sub-envs 2\.\.3\) exited with code 3 "
        "during step$",
    ):
        envs.step(_actions(DIE))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_worker_killed_between_calls_is_named_with_its_signal(bounded: None, sig: int) -> None:
    """The next call's send meets a closed pipe (BrokenPipeError) or the answer an EOF: both
    end in the same one line."""
    envs = _envs()
    pid = envs.processes[0].pid
    assert pid is not None
    os.kill(pid, sig)
    assert _wait_gone([pid], 5)
    name = signal.Signals(sig).name
    with pytest.raises(
        SamplerError, match=rf"worker 0 \(pid {pid}, sub-envs 0\.\.1\) was killed by {name}"
    ):
        envs.step(_actions(0.0))


def test_a_worker_dies_of_sigterm_whatever_handler_its_parent_had(bounded: None) -> None:
    """Ray's driver (ray.init) and other libraries install a Python SIGTERM handler that calls
    sys.exit; a forked worker must not inherit it (it exited with code 15 instead of being
    killed by SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    try:
        envs = _envs()
    finally:
        signal.signal(signal.SIGTERM, previous)
    pid = envs.processes[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone([pid], 5)
    with pytest.raises(SamplerError, match=r"worker 0 .* was killed by SIGTERM"):
        envs.step(_actions(0.0))


@pytest.fixture
def kill_soon() -> Iterator[Any]:
    """``kill_soon(pid, after)``: SIGKILL ``pid`` from a timer thread."""
    import threading

    timers: list[threading.Timer] = []

    def schedule(pid: int, after: float) -> None:
        timer = threading.Timer(after, lambda: _kill_all([pid]))
        timer.start()
        timers.append(timer)

    yield schedule
    for t in timers:
        t.cancel()


def test_worker_killed_while_the_parent_waits_is_named(bounded: None, kill_soon: Any) -> None:
    envs = _envs()
    pid = envs.processes[1].pid
    assert pid is not None
    kill_soon(pid, 0.5)
    with pytest.raises(
        SamplerError, match=rf"worker 1 \(pid {pid}, .*killed by SIGKILL.*during step"
    ):
        envs.step(_actions(HANG))


def test_stopped_worker_times_out_naming_it(bounded: None) -> None:
    envs = _envs(timeout_s=1.0)
    pid = envs.processes[1].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        clock = time.monotonic()
        with pytest.raises(
            SamplerError,
            match=rf"worker 1 \(pid {pid}, sub-envs 2\.\.3\) did not answer within timeout_s=1 s "
            r"\(it is stopped \(SIGSTOP\?\)\); killed during step",
        ):
            envs.step(_actions(0.0))
        assert time.monotonic() - clock < 1.0 + processes._CLOSE_WAIT_S + 2.0
        assert _wait_gone([pid], 5)
    finally:
        _kill_all([pid])


def test_hung_env_times_out_naming_it(bounded: None) -> None:
    envs = _envs(timeout_s=1.0)
    pids = [p.pid for p in envs.processes]
    with pytest.raises(
        SamplerError, match=r"worker 1 .* within timeout_s=1 s \(hung in its env\?\)"
    ):
        envs.step(_actions(HANG))
    assert _wait_gone([p for p in pids if p is not None], 10)


def test_close_does_not_wait_forever_on_a_stopped_worker(
    bounded: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "_CLOSE_WAIT_S", 0.5)
    envs = _envs()
    pid = envs.processes[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        clock = time.monotonic()
        envs.close()
        assert time.monotonic() - clock < 3.0
        assert _wait_gone([pid], 5)
    finally:
        _kill_all([pid])


def test_a_shard_that_fails_to_build_in_its_worker_is_named(bounded: None) -> None:
    envs = ShardedVectorEnv(_shard_failing_beyond_the_first, 4, num_workers=2)
    pid = envs.processes[1].pid
    with pytest.raises(
        SamplerError,
        match=rf"worker 1 \(pid {pid}, sub-envs 2\.\.3\) raised RuntimeError: no shard 2\.\.3 "
        "here during reset",
    ):
        envs.reset(seed=0)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ShardedVectorEnv(serial_shards([CommandEnv] * 2), 2, num_workers=1, timeout_s=0)


_TRAINER = """
import functools, sys, time
from metarl.rl.sampling.envs import make_env
from metarl.rl.sampling.processes import ShardedVectorEnv, serial_shards
env = functools.partial(make_env, "metarl/Navigation2D-v0")
envs = ShardedVectorEnv(serial_shards([env] * 4), 4, num_workers=2)
envs.reset(seed=0)
print(*[p.pid for p in envs.processes], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_exit_when_the_trainer_is_killed(sig: int) -> None:
    """The trainer (a child Python process here) dies by a signal, with no chance to clean up:
    its workers are gone within a few seconds, not left running forever."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen(
        [sys.executable, "-c", _TRAINER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    workers: list[int] = []
    try:
        assert trainer.stdout is not None
        ready, _, _ = select.select([trainer.stdout], [], [], 60)
        assert ready, "the trainer did not start its workers within 60 s"
        workers = [int(p) for p in trainer.stdout.readline().split()]
        assert len(workers) == 2 and not any(_gone(p) for p in workers)
        trainer.send_signal(sig)
        trainer.wait(timeout=10)
        assert _wait_gone(workers, 5), "workers outlived the trainer"
    finally:
        trainer.kill()
        trainer.wait(timeout=10)
        _kill_all([p for p in workers if not _gone(p)])


def test_stray_worker_pipe_ends_are_not_inherited(bounded: None) -> None:
    """Each forked worker closes its copies of the parent's pipe ends (its own and those of
    the workers started before it): the parent's end is the only one left open."""
    envs = _envs()
    try:
        parent_fd = envs.remotes[0].fileno()
        target = os.readlink(f"/proc/self/fd/{parent_fd}")  # e.g. socket:[12345]
        for proc in envs.processes:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            links = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in fds}
            assert target not in links, f"worker {proc.pid} holds the parent's end of pipe 0"
    finally:
        envs.close()
