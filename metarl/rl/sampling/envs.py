"""Task envs and vector envs from an env id: the ids a config may give (registered, a module's,
a file's), the action normalization and oracle wrappers, the env's own batched vector env or a
serial one, in this process or sharded over worker processes."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym

from metarl.rl.sampling.normalize import normalize_actions as normalized
from metarl.rl.sampling.normalize import normalize_vector_actions
from metarl.rl.sampling.oracle import OracleEnv
from metarl.rl.sampling.processes import ShardedVectorEnv, ShardFn, serial_shards

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


RESERVED_ENV_KWARGS = {
    "max_episode_steps": "the episode length is env.horizon",
    "disable_env_checker": "it is an argument of gymnasium.make, not of the env",
    "num_envs": "the sampler sets the number of sub-envs",
    "vectorization_mode": "the sampler picks the vector env",
    "vector_kwargs": "it is an argument of gymnasium.make_vec, not of the env",
    "wrappers": "it is an argument of gymnasium.make_vec, not of the env",
    "task": "tasks come from the env's task distribution",
    "tasks": "tasks come from the env's task distribution",
}
"""Keywords a task env's ``env_kwargs`` may not set, and why."""


def check_env_kwargs(env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``env_kwargs`` as a new dict; a reserved keyword (:data:`RESERVED_ENV_KWARGS`) is a
    ``ValueError`` that says why."""
    out = dict(env_kwargs or {})
    for name in RESERVED_ENV_KWARGS.keys() & out.keys():
        raise ValueError(f"env kwargs: {name!r} cannot be set here: {RESERVED_ENV_KWARGS[name]}")
    return out


def make_env(
    env_id: str,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    oracle: bool = False,
    normalize_actions: bool = False,
) -> gym.Env[Any, Any]:
    """``gymnasium.make`` of a task env id (see :func:`resolve_env_id`) with ``env_kwargs``
    for the env's constructor (e.g. ``{"frame_skip": 2}``); ``normalize_actions`` makes it act
    in [-1, 1] (:func:`metarl.rl.sampling.normalize.normalize_actions`); ``oracle`` wraps it
    in :class:`metarl.rl.sampling.oracle.OracleEnv` (the task is appended to the
    observation)."""
    env = gym.make(resolve_env_id(env_id), **check_env_kwargs(env_kwargs))
    if normalize_actions:
        env = normalized(env)
    return OracleEnv(env) if oracle else env


def make_vector_env(
    env_id: str,
    num_envs: int,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
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
    ``env_kwargs`` go to every sub-env's constructor, or to the batched vector env's.
    ``normalize_actions``: the whole vector env acts in [-1, 1] per sub-env
    (:func:`metarl.rl.sampling.normalize.normalize_vector_actions`, the single envs' map)."""
    env_id = resolve_env_id(env_id)
    kwargs = check_env_kwargs(env_kwargs)
    make_shard: ShardFn
    if gym.spec(env_id).vector_entry_point is not None and not oracle:
        make_shard = functools.partial(_native_shard, env_id, kwargs)
    else:
        make_shard = serial_shards(
            [
                functools.partial(make_env, env_id, env_kwargs=kwargs, oracle=oracle)
                for _ in range(num_envs)
            ]
        )
    envs: gym.vector.VectorEnv[Any, Any, Any]
    if backend == "processes":
        envs = ShardedVectorEnv(
            make_shard, num_envs, num_workers=num_workers, timeout_s=worker_timeout_s
        )
    else:
        envs = make_shard(0, num_envs)
    return normalize_vector_actions(envs) if normalize_actions else envs


def _native_shard(
    env_id: str, env_kwargs: Mapping[str, Any], start: int, stop: int
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """The env's own batched vector env over ``stop - start`` sub-envs."""
    return gym.make_vec(
        env_id, num_envs=stop - start, vectorization_mode="vector_entry_point", **env_kwargs
    )
