"""On-policy sampling: every task x episode advances together on one Gymnasium vector env.

Sub-env ``n`` runs task ``n // episodes_per_task`` for exactly one episode per call, so
Gymnasium's autoreset never splices two episodes together: a sub-env that has ended is masked
until the slowest episode ends (or the horizon is reached), and its autoreset step is ignored.
One batched policy forward per time step picks the actions of all sub-envs; no gradients are
kept. In the ``local`` and ``processes`` backends (:class:`Sampler`) the policy never leaves
this process (worker processes only step envs); the ``ray`` backend
(:class:`metarl.ray_sampler.RaySampler`) runs one such rollout per actor on its slice of the
tasks. A call's randomness is drawn up front (:class:`RolloutDraws`), so all backends give the
same episodes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from envs.normalize import normalize_actions as normalized
from envs.normalize import normalize_vector_actions
from envs.oracle import OracleEnv
from metarl.config import SamplerConfig
from metarl.episodes import EpisodeBatch
from metarl.policies import Params, Policy
from metarl.vector import ShardedVectorEnv, ShardFn, serial_shards

Backend = Literal["local", "processes"]


def resolve_env_id(env_id: str) -> str:
    """The registered id of ``env_id``, importing what registers it first.

    ``"Name-v0"``: an id already registered (``metarl/...``, Gymnasium's own).
    ``"module:Name-v0"``: ``module`` is imported first (from the Python path; the ``metarl``
    command also searches the working directory).
    ``"path/to/file.py:Name-v0"``: the file (relative to the working directory, or absolute)
    is imported first, once per process, as the module ``_metarl_envfile_<stem>_<hash of its
    absolute path>``: a worker process or Ray actor that is given the same id imports the same
    file under the same name, so its tasks (classes defined in the file) unpickle there.

    Raises a clear ``ValueError`` for a file that does not exist, a module or file that does
    not import, or an id that is still unknown.
    """
    source, sep, name = env_id.rpartition(":")
    if sep:
        try:
            if source.endswith(".py"):
                _import_env_file(source)
            else:
                importlib.import_module(source)
        except FileNotFoundError as err:
            raise ValueError(f"env id {env_id!r}: {err}") from None
        except ImportError as err:
            raise ValueError(
                f"env id {env_id!r}: cannot import module {source!r}: {err} (a module is found "
                "on the Python path, which the metarl command extends by the working "
                f"directory; or name the file: 'path/to/{source.split('.')[-1]}.py:{name}')"
            ) from None
        except Exception as err:  # a user's module that fails while importing
            raise ValueError(
                f"env id {env_id!r}: importing {source!r} raised {type(err).__name__}: {err}"
            ) from None
    if name not in gym.registry:
        ours = sorted(k for k in gym.registry if k.startswith("metarl/"))
        hint = f"{source!r} was imported but did not register {name!r}; " if sep else ""
        raise ValueError(
            f"unknown env id {env_id!r}; {hint}registered task envs: {', '.join(ours)} (a "
            "user's own env: 'module:Name-v0' or 'path/to/file.py:Name-v0', registered when "
            "the module or file imports)"
        )
    return name


def _import_env_file(path_text: str) -> None:
    """Import the Python file ``path_text`` (see :func:`resolve_env_id`) unless it was."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
        raise FileNotFoundError(f"file {path_text!r} does not exist{where}")
    path = path.resolve()
    stem = re.sub(r"\W", "_", path.stem)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"_metarl_envfile_{stem}_{digest}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{str(path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before it runs: dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def make_env(
    env_id: str, *, oracle: bool = False, normalize_actions: bool = False
) -> gym.Env[Any, Any]:
    """``gymnasium.make`` of a task env id (see :func:`resolve_env_id`); ``normalize_actions``
    makes it act in [-1, 1] (:func:`envs.normalize.normalize_actions`); ``oracle`` wraps it in
    :class:`envs.oracle.OracleEnv` (the task is appended to the observation)."""
    env = gym.make(resolve_env_id(env_id))
    if normalize_actions:
        env = normalized(env)
    return OracleEnv(env) if oracle else env


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    backend: Backend = "local",
    num_workers: int = 2,
    oracle: bool = False,
    normalize_actions: bool = False,
    worker_timeout_s: float = 300.0,
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """A vector env of ``num_envs`` sub-envs: the env's own batched implementation when it
    registers a ``vector_entry_point`` (and ``oracle`` is off), else a
    :class:`SerialVectorEnv` of single envs; in this process (``local``) or split into
    contiguous shards stepped by ``num_workers`` processes (``processes``,
    :class:`ShardedVectorEnv`, whose calls wait at most ``worker_timeout_s`` for a worker).
    ``normalize_actions``: the whole vector env acts in [-1, 1] per sub-env
    (:func:`envs.normalize.normalize_vector_actions`, the single envs' map)."""
    env_id = resolve_env_id(env_id)
    make_shard: ShardFn
    if gym.spec(env_id).vector_entry_point is not None and not oracle:
        make_shard = functools.partial(_native_shard, env_id)
    else:
        make_shard = serial_shards(
            [functools.partial(make_env, env_id, oracle=oracle) for _ in range(num_envs)]
        )
    envs: gym.vector.VectorEnv[Any, Any, Any]
    if backend == "processes":
        envs = ShardedVectorEnv(
            make_shard, num_envs, num_workers=num_workers, timeout_s=worker_timeout_s
        )
    else:
        envs = make_shard(0, num_envs)
    return normalize_vector_actions(envs) if normalize_actions else envs


def _native_shard(env_id: str, start: int, stop: int) -> gym.vector.VectorEnv[Any, Any, Any]:
    """The env's own batched vector env over ``stop - start`` sub-envs."""
    return gym.make_vec(env_id, num_envs=stop - start, vectorization_mode="vector_entry_point")


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


def make_sampler(
    config: SamplerConfig,
    *,
    env_id: str,
    num_tasks: int,
    episodes_per_task: int,
    horizon: int,
    oracle: bool = False,
    normalize_actions: bool = False,
) -> EpisodeSampler:
    """The sampler of ``config.backend``; the caller does not need to know which runs."""
    if config.backend == "ray":
        from metarl.ray_sampler import RaySampler

        return RaySampler(
            env_id=env_id,
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
        num_tasks=num_tasks,
        episodes_per_task=episodes_per_task,
        horizon=horizon,
        backend=config.backend,
        num_workers=config.num_workers,
        oracle=oracle,
        normalize_actions=normalize_actions,
    )


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
            obs, rew, term, trunc, _ = self.envs.step(env_act)
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
