"""Seconds per MAML-TRPO meta-iteration at the paper's size, per Hessian-vector product method;
the accuracy of those products; and the HalfCheetahVel sampling rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/maml_trpo_speed.py [--iters 3]
        [--methods finite_difference exact gauss_newton] [--skip-cheetah] [--skip-accuracy]
        [--cheetah-backends processes ray] [--paths accelerated generic]
        [--tune-malloc] [--hvp-subsample 1.0 0.1] [--learner-threads 1 2]

1. Navigation2D, 20 tasks x 20 episodes x horizon 100 (40,000 train and 40,000 valid steps),
   Gaussian MLP 2-100-100-2 ReLU, one inner VPG step, second order: ``MAMLTRPOLearner.step``
   after one warm-up iteration, median over ``--iters`` of the wall seconds of sampling,
   adaptation and TRPO (and of the whole iteration, wall and CPU), per ``trpo.hvp`` method.
   Each method trains from the same seed, so the iterations see the same first batch.
   ``--hvp-subsample 1.0 0.1`` also times each method with the products on 10% of the tasks
   (``trpo.hvp_subsample``; the gradient and the line search still use all), and
   ``--learner-threads 1 2`` with one and two torch threads for the adaptation and the outer
   step (``learner_threads``; sampling keeps one). ``--paths generic`` forces the generic
   ``torch.func`` path (``trpo.accelerator=false``; keys ``.../generic``); ``--paths
   accelerated generic`` runs both learners in the same process, their iterations
   interleaved (on a loaded machine, the fair comparison), and prints the ratio of their
   medians. ``exact`` has no accelerated path.
2. Accuracy on real Navigation2D meta-batches (``--accuracy-at``: after that many training
   iterations; 0 is the initialisation, the hardest case for finite differences): each
   method's product against exact double backprop at theta_old, on the gradient (the first
   vector conjugate gradient multiplies) and on all ten conjugate-gradient vectors of the
   exact solve (cosine, and minimum cosine), and the cosine of the solved step direction.
   ``finite_difference`` is shown at the default ``fd_base_eps`` and at the paper's 1e-5.
3. HalfCheetahVel, 40 tasks x 20 episodes x horizon 200 on the ``processes`` sampler (and,
   with ``--cheetah-backends processes ray``, the ``ray`` one) with two workers: env steps per
   second of one ``sample`` call (after a warm-up call), beside raw ``HalfCheetah-v5`` stepping
   (single env, random actions, best of five windows) in the same run, and the ratio to twice
   the raw single-core rate.

``--tune-malloc`` raises glibc's trim threshold and top pad (``mallopt``) before anything runs,
so that freed 16 MB activations are reused instead of returned to the kernel and faulted in
again; compare a run with and without it. The last line printed is one JSON object with all
figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import ctypes
import functools
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from metarl.config import load_config
from metarl.rl.learners import MAMLTRPOLearner, make_policy, task_env
from metarl.rl.maml_trpo import MetaBatch, MetaObjective, TaskAdaptation, adapt_meta_batch
from metarl.rl.mlp_accelerator import accelerate
from metarl.rl.sampling import make_sampler
from metarl.rl.sampling.envs import make_env
from metarl.rl.trpo import conjugate_gradient, exact_hvp_closure, hvp_finite_difference
from metarl.rngs import Rngs

METHODS = ("finite_difference", "exact", "gauss_newton")
NAV = ["kind=rl", "env.id=metarl/Navigation2D-v0", "env.horizon=100", "meta_batch_size=20"]
NAV += ["episodes_per_task=20", "inner.steps=1", "inner.first_order=false"]


def tune_malloc() -> None:
    """Keep freed heap memory for reuse (glibc ``mallopt``; no effect elsewhere)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (the most glibc allows)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------- 1. speed


def time_method(
    hvp: str, iters: int, seed: int, subsample: float = 1.0, threads: int = 1,
    paths: tuple[str, ...] = ("accelerated",),
) -> dict[str, float]:  # fmt: skip
    """Median seconds per meta-iteration (and its parts) of ``iters`` iterations after one
    warm-up iteration, training with ``trpo.hvp=hvp`` (and ``trpo.hvp_subsample``, keys
    ``hvp@subsample`` when below 1; ``learner_threads``, keys ``.../threads=N`` when above 1),
    on each of ``paths`` (keys ``.../generic`` for the generic one), their learners' iterations
    interleaved."""
    name = hvp if subsample == 1.0 else f"{hvp}@{subsample:g}"
    name = name if threads == 1 else f"{name}/threads={threads}"
    learners: dict[str, tuple[MAMLTRPOLearner, Rngs]] = {}
    runs: dict[str, list[dict[str, float]]] = {}
    for path in paths:
        overrides = [f"trpo.hvp={hvp}", f"trpo.hvp_subsample={subsample}", f"seed={seed}"]
        overrides += [f"learner_threads={threads}", f"trpo.accelerator={path == 'accelerated'}"]
        key = name if path == "accelerated" else f"{name}/generic"
        rngs = Rngs.from_seed(seed)
        learners[key] = (MAMLTRPOLearner(load_config(None, [*NAV, *overrides]), rngs), rngs)
        runs[key] = []
    try:
        for i in range(iters + 1):
            for key, (learner, rngs) in learners.items():
                wall, cpu = time.perf_counter(), time.process_time()
                stats = learner.step(rngs)
                stats["time/total_s"] = time.perf_counter() - wall
                stats["time/cpu_s"] = time.process_time() - cpu
                if i > 0:
                    runs[key].append(stats)
    finally:
        for learner, _ in learners.values():
            learner.close()
    out: dict[str, float] = {}
    for key, rows in runs.items():
        for k in ("sample_s", "adapt_s", "trpo_s", "total_s", "cpu_s"):
            out[f"{key}/{k}"] = statistics.median(r[f"time/{k}"] for r in rows)
        out[f"{key}/backtracks"] = statistics.median(r["trpo/backtracks"] for r in rows)
        out[f"{key}/accepted"] = sum(r["trpo/step_accepted"] for r in rows) / len(rows)
    if len(runs) == 2:
        out[f"{name}/speedup_total"] = out[f"{name}/generic/total_s"] / out[f"{name}/total_s"]
    out[f"{name}/peak_rss_mb"] = peak_rss_mb()
    return out


# ---------------------------------------------------------------------- 2. accuracy


def meta_batch(learner: MAMLTRPOLearner, rngs: Rngs) -> tuple[MetaBatch, TaskAdaptation]:
    """One meta-batch sampled as ``MAMLTRPOLearner.step`` samples it, at its weights."""
    config = learner.config
    tasks = learner.tasks.sample_tasks(config.meta_batch_size, rngs.numpy)
    seeds = rngs.numpy.integers(0, 2**31 - 1, size=2)
    train = learner.sample(learner.params, tasks, rngs, int(seeds[0]))
    train_adv = learner.advantages(train)
    adaptation = adapt_meta_batch(learner.policy, learner.params, train, train_adv, learner.inner)
    valid = learner.sample(adaptation.params, tasks, rngs, int(seeds[1]), per_task=True)
    batch = MetaBatch(train, train_adv, valid, learner.advantages(valid), learner.inner)
    return batch, adaptation


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def compare(
    hvp: Callable[[Tensor], Tensor], exact: list[Tensor], vectors: list[Tensor], g: Tensor,
    x_exact: Tensor,
) -> dict[str, float]:  # fmt: skip
    """Cosines of ``hvp`` to the exact products on the exact solve's CG vectors, and of the
    step direction its own CG solve finds to the exact one."""
    cosines = [cosine(hvp(v), e) for v, e in zip(vectors, exact, strict=True)]
    x = conjugate_gradient(hvp, g, iters=len(vectors))
    return {"cos_grad": cosines[0], "min_cos_cg": min(cosines), "cos_step": cosine(x, x_exact)}


def accuracy_at(iteration: int, fd_eps: list[float], seed: int) -> dict[str, float]:
    """HVP accuracy at theta_old on the meta-batch of training iteration ``iteration``."""
    config = load_config(None, [*NAV, "trpo.hvp=gauss_newton", f"seed={seed}"])
    rngs = Rngs.from_seed(seed)
    learner = MAMLTRPOLearner(config, rngs)
    try:
        for _ in range(iteration):
            learner.step(rngs)
        batch, adaptation = meta_batch(learner, rngs)
    finally:
        learner.close()
    policy, theta, damping = learner.policy, adaptation.theta, config.trpo.damping
    objective = MetaObjective(policy, batch, adaptation)
    exact_fn = exact_hvp_closure(objective.kl, theta, damping=damping)
    accelerated = accelerate(policy, objective)
    assert accelerated is not None
    g = objective.loss_and_grad(theta)[1]
    vectors: list[Tensor] = []
    exact: list[Tensor] = []

    def record(v: Tensor) -> Tensor:
        vectors.append(v.clone())
        exact.append(exact_fn(v))
        return exact[-1]

    x_exact = conjugate_gradient(record, g, iters=config.trpo.cg_iters)
    methods: dict[str, Callable[[Tensor], Tensor]] = {
        "gauss_newton": lambda v: accelerated.gauss_newton_hvp(v) + damping * v,
        "gauss_newton/generic": lambda v: objective.gauss_newton_hvp(v) + damping * v,
    }
    for eps in fd_eps:
        methods[f"finite_difference@{eps:g}"] = functools.partial(
            hvp_finite_difference, objective.kl_grad, theta, base_eps=eps, damping=damping
        )
    out: dict[str, float] = {}
    for name, fn in methods.items():
        for key, value in compare(fn, exact, vectors, g, x_exact).items():
            out[f"accuracy_it{iteration}/{name}/{key}"] = value
    return out


# ----------------------------------------------------------------------- 3. sampling


def raw_cheetah_rate(seconds: float, windows: int = 5) -> float:
    """Steps per second of one ``HalfCheetah-v5`` with uniform random actions: the best of
    ``windows`` windows of ``seconds / windows`` each (a ceiling; single windows on this shared
    machine vary by a quarter)."""
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    actions = np.random.default_rng(0).uniform(space.low, space.high, (100, *space.shape))
    actions = actions.astype(space.dtype)
    best = 0.0
    for _ in range(windows):
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / windows:
            for a in actions:
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    env.reset()
            steps += len(actions)
        best = max(best, steps / elapsed)
    env.close()
    return best


def cheetah_figures(seconds: float, seed: int, backend: str) -> dict[str, float]:
    overrides = ["kind=rl", "env.id=metarl/HalfCheetahVel-v0", "env.horizon=200"]
    overrides += ["meta_batch_size=40", "episodes_per_task=20", f"sampler.backend={backend}"]
    config = load_config(None, [*overrides, "sampler.num_workers=2"])
    env = make_env(config.env.id)
    policy = make_policy(config, env)
    params = policy.init_params(torch.Generator().manual_seed(seed))
    tasks = task_env(env, config.env.id).sample_tasks(40, np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)
    with make_sampler(
        config.sampler, env_id=config.env.id, num_tasks=40, episodes_per_task=20, horizon=200
    ) as sampler:
        sampler.sample(policy, params, tasks, generator=generator, seed=seed)
        start = time.perf_counter()
        batch = sampler.sample(policy, params, tasks, generator=generator, seed=seed + 1)
        elapsed = time.perf_counter() - start
    env.close()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        raw = raw_cheetah_rate(seconds)
    rate = float(batch.mask.sum()) / elapsed
    return {
        f"cheetah/{backend}/sample_s": elapsed,
        f"cheetah/{backend}/steps_per_s": rate,
        f"cheetah/{backend}/raw_single_steps_per_s": raw,
        f"cheetah/{backend}/ratio_to_2x_raw": rate / (2.0 * raw),
    }


# ---------------------------------------------------------------------------- main


def report(figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        print(f"{key:55s} {value:12.4f}" if isinstance(value, float) else f"{key:55s} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per method")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--accuracy-at", type=int, nargs="*", default=[0, 3])
    parser.add_argument("--fd-eps", type=float, nargs="*", default=None, help="default, 1e-5")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cheetah", action="store_true")
    parser.add_argument(
        "--cheetah-backends", nargs="*", default=["processes"], choices=["processes", "ray"]
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="raw cheetah stepping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tune-malloc", action="store_true")
    parser.add_argument(
        "--hvp-subsample", type=float, nargs="*", default=[1.0], help="trpo.hvp_subsample values"
    )
    parser.add_argument(
        "--learner-threads", type=int, nargs="*", default=[1], help="learner_threads values"
    )
    parser.add_argument(
        "--paths", nargs="*", default=["accelerated"], choices=["accelerated", "generic"],
        help="generic: trpo.accelerator=false; both: interleaved in one process",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.tune_malloc:
        tune_malloc()
    figures: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    figures["malloc_tuned"] = args.tune_malloc
    for hvp in args.methods:  # gauss_newton's peak memory first would need its own process
        for frac in args.hvp_subsample:
            for threads in args.learner_threads:
                paths = ("accelerated",) if hvp == "exact" else tuple(args.paths)
                got = time_method(hvp, args.iters, args.seed, frac, threads, paths)
                figures.update(got)
                report(got)
    if not args.skip_accuracy:
        default_eps = load_config(None, ["kind=rl"]).trpo.fd_base_eps
        fd_eps = args.fd_eps if args.fd_eps is not None else [default_eps, 1e-5]
        for iteration in args.accuracy_at:
            acc = accuracy_at(iteration, fd_eps, args.seed)
            report(acc)
            figures.update(acc)
    if not args.skip_cheetah:
        for backend in args.cheetah_backends:
            cheetah = cheetah_figures(args.seconds, args.seed, backend)
            report(cheetah)
            figures.update(cheetah)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
