"""The Ray sampler backend: same episodes as the local backend, a 2-node cluster on loopback,
and workers that crash or hang mid-sampling replaced without changing a single number."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Read when Ray is imported: keeps a local multi-node cluster on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

import ray_envs  # noqa: E402  (tests/ is on sys.path under pytest)
from ray.cluster_utils import Cluster  # noqa: E402

from metarl.config import load_config  # noqa: E402
from metarl.errors import SamplerError  # noqa: E402
from metarl.rl.episodes import EpisodeBatch  # noqa: E402
from metarl.rl.learners import MAMLTRPOLearner  # noqa: E402
from metarl.rl.policies import GaussianMLPPolicy, Params  # noqa: E402
from metarl.rl.sampling.envs import make_env  # noqa: E402
from metarl.rl.sampling.local import Sampler  # noqa: E402
from metarl.rl.sampling.ray import RaySampler  # noqa: E402
from metarl.rngs import Rngs  # noqa: E402

MB = 1024 * 1024


@pytest.fixture(scope="module")
def flags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray_flags")


@pytest.fixture(scope="module")
def cluster(flags: Path) -> Iterator[Cluster]:
    """Two Ray nodes of one CPU each, every server on 127.0.0.1."""
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * MB}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    tests_dir = str(Path(ray_envs.__file__).parent)
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    runtime_env = {
        "env_vars": {"PYTHONPATH": path, ray_envs.FLAG_DIR: str(flags), "OMP_NUM_THREADS": "1"}
    }
    ray.init(address=c.address, runtime_env=runtime_env, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _policy(cls: type[GaussianMLPPolicy] = GaussianMLPPolicy) -> tuple[GaussianMLPPolicy, Params]:
    policy = cls(obs_dim=2, act_dim=2, hidden_sizes=(16, 16), init_log_std=-0.5)
    return policy, policy.init_params(torch.Generator().manual_seed(0))


def _per_task(params: Params, num_tasks: int) -> Params:
    gen = torch.Generator().manual_seed(3)
    return {
        k: v + 0.1 * torch.randn((num_tasks, *v.shape), generator=gen) for k, v in params.items()
    }


def _tasks(env_id: str, n: int) -> list[Any]:
    return make_env(env_id).unwrapped.sample_tasks(n, np.random.default_rng(1))  # type: ignore[no-any-return]


def _sample(
    sampler: Any,
    env_id: str,
    *,
    per_task: bool = False,
    num_tasks: int = 5,
    cls: type[GaussianMLPPolicy] = GaussianMLPPolicy,
) -> Any:
    policy, params = _policy(cls)
    if per_task:
        params = _per_task(params, num_tasks)
    return sampler.sample(
        policy,
        params,
        _tasks(env_id, num_tasks),
        generator=torch.Generator().manual_seed(7),
        seed=11,
        per_task_params=per_task,
    )


def _local(
    env_id: str,
    *,
    per_task: bool = False,
    horizon: int = 30,
    cls: type[GaussianMLPPolicy] = GaussianMLPPolicy,
) -> EpisodeBatch:
    with Sampler(env_id=env_id, num_tasks=5, episodes_per_task=3, horizon=horizon) as sampler:
        return _sample(sampler, env_id, per_task=per_task, cls=cls)  # type: ignore[no-any-return]


def _ray(**kwargs: Any) -> RaySampler:
    args: dict[str, Any] = {"num_tasks": 5, "episodes_per_task": 3, "horizon": 30}
    return RaySampler(**(args | kwargs))


def assert_same(a: EpisodeBatch, b: EpisodeBatch) -> None:
    for name in ("observations", "actions", "rewards", "mask", "lengths", "terminated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("truncated", "last_observations", "log_probs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.num_tasks, a.episodes_per_task) == (b.num_tasks, b.episodes_per_task)


@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", ray_envs.ENV_ID])
def test_ray_batches_equal_local_batches(cluster: Cluster, env_id: str) -> None:
    """A batched vector env and a plain one; shared weights and per-task (adapted) weights."""
    with _ray(env_id=env_id, num_workers=2) as sampler:
        for per_task in (False, True):
            local = _local(env_id, per_task=per_task)
            assert_same(_sample(sampler, env_id, per_task=per_task), local)
        assert len(set(sampler.worker_nodes())) == 2  # one actor on each node


def test_ray_actors_act_on_the_meta_batch_shape(cluster: Cluster) -> None:
    """A policy whose outputs depend on the shape of the forward call (as a BLAS's rounding
    does on some CPUs, issue 14): the actors, which own 3 and 2 of the 5 tasks, still act
    exactly as the local sampler, since every backend acts on the whole meta-batch's shape."""
    env_id, cls = "metarl/Navigation2D-v0", ray_envs.ShapeSensitivePolicy
    with _ray(env_id=env_id, num_workers=2) as sampler:
        for per_task in (False, True):
            got = _sample(sampler, env_id, per_task=per_task, cls=cls)
            assert_same(got, _local(env_id, per_task=per_task, cls=cls))


@pytest.mark.parametrize("env_kwargs", [{}, {"frame_skip": 2}], ids=["v5", "frame_skip=2"])
def test_ray_mujoco_batches_equal_local_batches(
    cluster: Cluster, env_kwargs: dict[str, Any]
) -> None:
    """Also with constructor arguments (``env.kwargs``), which the actors' envs must get."""
    env_id = "metarl/HalfCheetahVel-v0"
    policy = GaussianMLPPolicy(obs_dim=17, act_dim=6, hidden_sizes=(16,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    tasks = _tasks(env_id, 3)
    kw: dict[str, Any] = {
        "num_tasks": 3, "episodes_per_task": 2, "horizon": 25, "env_kwargs": env_kwargs
    }  # fmt: skip
    with Sampler(env_id=env_id, **kw) as local, RaySampler(env_id=env_id, **kw) as remote:
        a, b = (
            s.sample(policy, params, tasks, generator=torch.Generator().manual_seed(2), seed=4)
            for s in (local, remote)
        )
    assert_same(a, b)


def test_actor_killed_between_calls_is_replaced(cluster: Cluster) -> None:
    env_id = "metarl/Navigation2D-v0"
    with _ray(env_id=env_id, num_workers=2) as sampler:
        first = _sample(sampler, env_id)
        sampler.kill_worker(1)
        assert_same(_sample(sampler, env_id), first)
        assert sampler.restarts == 1


@pytest.mark.parametrize("flag", ["die", "hang"])
def test_worker_crashing_or_hanging_mid_sampling_is_survived_identically(
    cluster: Cluster, flags: Path, flag: str
) -> None:
    expected = _local(ray_envs.ENV_ID)
    with _ray(env_id=ray_envs.ENV_ID, num_workers=2, timeout_s=300.0) as sampler:
        clock = time.perf_counter()
        _sample(sampler, ray_envs.ENV_ID)  # actors up: their start-up is the slow part
        if flag == "hang":
            # a hung worker is noticed after timeout_s: short here, but with room for a new
            # actor to start on a loaded machine (a replacement's start-up counts against its
            # call), measured by the first call, which started two
            sampler.timeout_s = max(20.0, 3.0 * (time.perf_counter() - clock))
        (flags / flag).touch()  # the first worker to reach step 5 dies / hangs there
        got = _sample(sampler, ray_envs.ENV_ID)
        assert not (flags / flag).exists() and sampler.restarts >= 1
    assert_same(got, expected)


def test_worker_that_keeps_dying_gives_a_clear_error_not_a_hang(
    cluster: Cluster, flags: Path
) -> None:
    (flags / "always_die").touch()
    try:
        with (
            _ray(env_id=ray_envs.ENV_ID, num_workers=2, max_retries=1) as sampler,
            pytest.raises(SamplerError, match=r"worker \d .* failed 2 times .*max_retries=1"),
        ):
            _sample(sampler, ray_envs.ENV_ID)
    finally:
        (flags / "always_die").unlink()


def test_maml_training_on_the_two_node_cluster_equals_local(cluster: Cluster) -> None:
    """Two MAML-TRPO iterations of a small Navigation2D run: same weights on either backend."""
    tiny = ["kind=rl", "meta_batch_size=4", "episodes_per_task=5", "env.horizon=30"]
    weights = []
    for backend in ("local", "ray"):
        cfg = load_config(None, [*tiny, f"sampler.backend={backend}", "sampler.num_workers=2"])
        rngs = Rngs.from_seed(cfg.seed)
        learner = MAMLTRPOLearner(cfg, rngs)
        try:
            stats = [learner.step(rngs) for _ in range(2)]
            weights.append(learner.weights())
        finally:
            learner.close()
        assert all(np.isfinite(s["post_adapt_return"]) for s in stats)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_more_workers_than_tasks_is_refused(cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="num_workers <= num_tasks"):
        _ray(env_id="metarl/Navigation2D-v0", num_workers=6)


_CONNECT_SCRIPT = """
import sys, torch, numpy as np, ray
from metarl.rl.sampling.ray import RaySampler
from metarl.rl.sampling.local import Sampler
from metarl.rl.sampling.envs import make_env
from metarl.rl.policies import GaussianMLPPolicy

address = sys.argv[1] if len(sys.argv) > 1 else None
policy = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(8,))
params = policy.init_params(torch.Generator().manual_seed(0))
env_id = "metarl/Navigation2D-v0"
tasks = make_env(env_id).unwrapped.sample_tasks(2, np.random.default_rng(0))
kw = dict(env_id=env_id, num_tasks=2, episodes_per_task=3, horizon=20)
batches = []
for sampler in (Sampler(**kw), RaySampler(address=address, num_workers=2, **kw)):
    batches.append(sampler.sample(policy, params, tasks, generator=torch.Generator(), seed=1))
    sampler.close()
assert torch.equal(batches[0].observations, batches[1].observations)
print("nodes", len(ray.nodes()) if ray.is_initialized() else 0, "initialized", ray.is_initialized())
"""


@pytest.mark.parametrize("join", [True, False], ids=["join-cluster", "start-local"])
def test_sampler_joins_a_cluster_or_starts_a_local_ray(cluster: Cluster, join: bool) -> None:
    """In a fresh process: joining ``ray_address`` (this test's 2-node cluster) leaves that
    Ray up; starting a local one (no address) shuts it down with the last sampler."""
    import subprocess
    import sys

    args = [sys.executable, "-c", _CONNECT_SCRIPT, *([cluster.address] if join else [])]
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = "nodes 2 initialized True" if join else "nodes 0 initialized False"
    assert expected in out.stdout


_LISTENERS_SCRIPT = r"""
import os, socket, struct, sys, time
import numpy as np, torch
from metarl.rl.policies import GaussianMLPPolicy
from metarl.rl.sampling.ray import RaySampler
from metarl.rl.sampling.envs import make_env


def tree(root):
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def address(hexaddr, v6):
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if v6:  # four little-endian 32-bit words
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def listening(pids):
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            name = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners.setdefault(link[8:-1], set()).add(name)
    found = set()
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            rows = open(f"/proc/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and f[9] in owners:  # 0A: LISTEN
                ip, port = address(f[1], v6)
                found |= {(ip, port, name) for name in owners[f[9]]}
    return found


policy = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(8,))
params = policy.init_params(torch.Generator().manual_seed(0))
env_id = "metarl/Navigation2D-v0"
tasks = make_env(env_id).unwrapped.sample_tasks(2, np.random.default_rng(0))
sampler = RaySampler(env_id=env_id, num_tasks=2, episodes_per_task=2, horizon=5, num_workers=2)
sampler.sample(policy, params, tasks, generator=torch.Generator(), seed=1)  # actors up
seen = set()
for _ in range(4):  # agents may bind a little later than the actors start
    seen |= listening(tree(os.getpid()))
    time.sleep(1.0)
sampler.close()
for ip, port, name in sorted(seen):
    print("LISTEN", ip, port, name)
"""


def test_a_local_ray_listens_on_loopback_only() -> None:
    """The sampler's own local Ray (no ``ray_address``), in a fresh process: every listening TCP
    socket of that process and all its descendants (GCS, raylet, object manager, agents,
    actors) is bound to 127.0.0.1 (or ::1), none to 0.0.0.0 or another interface. Read from
    ``/proc`` (Linux)."""
    import subprocess
    import sys

    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", _LISTENERS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    listeners = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("LISTEN")]
    names = {name for *_, name in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners  # the probe sees Ray's servers
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    exposed = [x for x in listeners if x[0] not in loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"
