"""The ``ray`` sampler backend: Ray actors own slices of the tasks and roll them out themselves.

Each actor (a :class:`RolloutWorker`) holds a local :class:`~metarl.rl.sampling.local.Sampler`
over its slice of the tasks (all their episodes) and a copy of the policy's architecture, built
once from its :class:`~metarl.rl.policies.PolicySpec`. Per call the learner draws all the randomness
(:class:`~metarl.rl.sampling.base.RolloutDraws`), ships the current weights (one object-store copy;
adapted per-task weights are sliced like the tasks), each actor's tasks and draws; every actor
steps its envs with the policy on its own CPU and sends back an :class:`EpisodeBatch`, which
the learner joins in task order. The episodes are a function of what was sent, so the batch
equals the local backend's for the same seeds, however the tasks are split.

Fault tolerance: an actor that dies, or does not answer within ``timeout_s``, is killed,
replaced, and its slice re-sampled from the same inputs (same episodes), up to
``max_retries`` times per call; after that a :class:`~metarl.errors.SamplerError` names the
worker and the last failure. Nothing waits without a bound.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from metarl.errors import SamplerError
from metarl.rl.episodes import EpisodeBatch, concat_tasks
from metarl.rl.policies import Params, Policy, PolicySpec
from metarl.rl.sampling.base import EpisodeSampler, RolloutDraws
from metarl.rl.sampling.local import Sampler
from metarl.rl.sampling.processes import shard_bounds

INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'ray>=2.30')"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`SamplerError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise SamplerError(
            f"sampler.backend 'ray' needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


class RolloutWorker:
    """What a Ray actor runs: a local sampler over ``num_tasks`` tasks (tasks ``task_offset``
    on of a meta-batch of ``meta_batch_tasks``, whose shape it acts on, as the local sampler
    does: see :class:`~metarl.rl.sampling.local.Sampler`) and the policy."""

    def __init__(
        self,
        *,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None = None,
        num_tasks: int,
        episodes_per_task: int,
        horizon: int,
        oracle: bool,
        policy_spec: PolicySpec,
        normalize_actions: bool = False,
        task_offset: int = 0,
        meta_batch_tasks: int | None = None,
    ) -> None:
        torch.set_num_threads(1)
        self.sampler = Sampler(
            env_id=env_id,
            env_kwargs=env_kwargs,
            num_tasks=num_tasks,
            episodes_per_task=episodes_per_task,
            horizon=horizon,
            oracle=oracle,
            normalize_actions=normalize_actions,
            task_offset=task_offset,
            meta_batch_tasks=meta_batch_tasks,
        )
        self.policy = policy_spec.build()

    def rollout(
        self, params: Params, tasks: Sequence[Any], draws: RolloutDraws, per_task_params: bool
    ) -> EpisodeBatch:
        return self.sampler.rollout(
            self.policy, params, tasks, draws, per_task_params=per_task_params
        )

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return str(ray.get_runtime_context().get_node_id())


# Whether this module started the running Ray, and how many samplers are open on it: the last
# one to close shuts a Ray down that this module started (never one the user started).
_ray_state = {"started_here": False, "open": 0}


def connect(address: str | None) -> None:
    """Use the Ray of this process if initialised, else connect to ``address`` (``"auto"``,
    ``"host:port"``, ``"ray://..."``) or, for ``None``, start a new local Ray bound to loopback
    (``address="local"``: a bare ``ray.init()`` would join whatever cluster was started last on
    this machine). Every listening socket of that Ray (GCS, raylet, object manager, agents,
    actors) is on 127.0.0.1 (``test_a_local_ray_listens_on_loopback_only``; with a node
    address of another interface Ray listens on all of them)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address is None:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
        _ray_state["started_here"] = True
        return
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SamplerError(f"cannot connect to the Ray cluster at {address!r}: {err}") from err


class RaySampler(EpisodeSampler):
    """The ``ray`` backend: ``num_workers`` Ray actors, each owning a contiguous slice of the
    tasks (so ``num_workers <= num_tasks``)."""

    def __init__(
        self,
        *,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None = None,
        num_tasks: int,
        episodes_per_task: int,
        horizon: int,
        num_workers: int = 2,
        oracle: bool = False,
        normalize_actions: bool = False,
        address: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 3,
        cpus_per_worker: float = 1.0,
    ) -> None:
        super().__init__(
            env_id=env_id, num_tasks=num_tasks, episodes_per_task=episodes_per_task, horizon=horizon
        )
        if not 1 <= num_workers <= num_tasks:
            raise ValueError(
                f"ray sampler: each worker owns whole tasks, so 1 <= num_workers <= num_tasks; "
                f"got {num_workers} workers for {num_tasks} tasks"
            )
        if timeout_s <= 0 or max_retries < 0:
            raise ValueError("ray sampler: timeout_s must be > 0 and max_retries >= 0")
        self.env_kwargs = dict(env_kwargs or {})
        self.oracle = oracle
        self.normalize_actions = normalize_actions
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.cpus_per_worker = cpus_per_worker
        self.bounds = shard_bounds(num_tasks, num_workers)
        self._ray = import_ray()
        connect(address)
        _ray_state["open"] += 1
        self._closed = False
        self._spec: PolicySpec | None = None
        self._actors: list[Any] = []
        self._actor_cls: Any = None
        self.restarts = 0
        """Actors replaced so far (dead or hung)."""

    # -- actors

    def _spawn(self, i: int) -> Any:
        assert self._spec is not None
        a, b = self.bounds[i]
        if self._actor_cls is None:  # one remote class for all the actors of this sampler
            remote = self._ray.remote(num_cpus=self.cpus_per_worker, max_restarts=0)
            self._actor_cls = remote(RolloutWorker)
        return self._actor_cls.remote(
            env_id=self.env_id,
            env_kwargs=self.env_kwargs,
            num_tasks=b - a,
            episodes_per_task=self.episodes_per_task,
            horizon=self.horizon,
            oracle=self.oracle,
            normalize_actions=self.normalize_actions,
            policy_spec=self._spec,
            task_offset=a,
            meta_batch_tasks=self.num_tasks,
        )

    def _ensure_actors(self, policy: Policy) -> None:
        spec = policy.spec()
        if spec == self._spec and self._actors:
            return
        self._kill_actors()
        self._spec = spec
        self._actors = [self._spawn(i) for i in range(len(self.bounds))]

    def _replace(self, i: int) -> None:
        with contextlib.suppress(Exception):  # a dead actor needs no kill
            self._ray.kill(self._actors[i], no_restart=True)
        self._actors[i] = self._spawn(i)
        self.restarts += 1

    def _kill_actors(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone is fine
                self._ray.kill(actor, no_restart=True)
        self._actors = []

    def kill_worker(self, i: int) -> None:
        """Kill worker ``i`` now, as a crash would (for tests and drills): the next call
        notices, replaces it, and re-samples its slice."""
        self._ray.kill(self._actors[i], no_restart=True)

    def worker_nodes(self) -> list[str]:
        """The Ray node of each worker (actors exist after the first :meth:`sample`)."""
        return [str(n) for n in self._ray.get([a.node_id.remote() for a in self._actors])]

    # -- sampling

    def rollout(
        self,
        policy: Policy,
        params: Params,
        tasks: Sequence[Any],
        draws: RolloutDraws,
        *,
        per_task_params: bool = False,
    ) -> EpisodeBatch:
        """Each actor rolls out its slice of the tasks with its slice of ``draws``."""
        if self._closed:
            raise SamplerError("ray sampler: sample() after close()")
        weights = {k: v.detach() for k, v in params.items()}
        shared = None if per_task_params else self._ray.put(weights)
        e = self.episodes_per_task

        def call(i: int) -> Any:
            a, b = self.bounds[i]
            w = {k: v[a:b] for k, v in weights.items()} if per_task_params else shared
            return self._actors[i].rollout.remote(
                w, list(tasks[a:b]), draws.slice(a * e, b * e), per_task_params
            )

        self._ensure_actors(policy)
        return concat_tasks(self._gather(call))

    def _gather(self, call: Any) -> list[EpisodeBatch]:
        ray = self._ray
        n = len(self.bounds)
        results: list[EpisodeBatch | None] = [None] * n
        failures = [0] * n
        pending = {call(i): i for i in range(n)}
        started = dict.fromkeys(range(n), time.monotonic())

        def retry(i: int, why: str) -> None:
            failures[i] += 1
            if failures[i] > self.max_retries:
                self._kill_actors()
                a, b = self.bounds[i]
                raise SamplerError(
                    f"ray sampler: worker {i} (tasks {a}..{b - 1}) failed {failures[i]} times "
                    f"in one call (max_retries={self.max_retries}); last: {why}"
                )
            self._replace(i)
            pending[call(i)] = i
            started[i] = time.monotonic()

        while pending:
            now = time.monotonic()
            wait = max(0.0, min(started[i] + self.timeout_s - now for i in pending.values()))
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                    retry(i, f"{type(err).__name__}: {_first_line(err)}")
                except ray.exceptions.RayTaskError as err:
                    self._raise_task_error(i, err)
            now = time.monotonic()
            for ref, i in list(pending.items()):
                if now - started[i] >= self.timeout_s:
                    del pending[ref]
                    retry(i, f"no answer within timeout_s={self.timeout_s:g} s{self._cpu_hint()}")
        return [r for r in results if r is not None]

    def _cpu_hint(self) -> str:
        have = self._ray.cluster_resources().get("CPU", 0.0)
        need = self.cpus_per_worker * len(self.bounds)
        if have < need:
            return f" (the cluster has {have:g} CPUs; {len(self.bounds)} workers need {need:g})"
        return ""

    def _raise_task_error(self, i: int, err: Any) -> None:
        """An exception inside the worker's rollout is the env's or the policy's, not a crash:
        re-running gives the same, so it is raised (a non-finite observation as the
        ``FloatingPointError`` the trainer reports)."""
        cause = getattr(err, "cause", None)
        if isinstance(cause, FloatingPointError):
            raise FloatingPointError(f"ray worker {i}: {cause}") from None
        raise SamplerError(f"ray sampler: worker {i} raised:\n{err}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kill_actors()
        _ray_state["open"] -= 1
        if _ray_state["open"] == 0 and _ray_state["started_here"]:
            _ray_state["started_here"] = False
            if self._ray.is_initialized():
                self._ray.shutdown()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)
