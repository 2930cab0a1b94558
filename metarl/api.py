"""The Python API: train a run, evaluate it, load its policy, act with it, adapt it to a task.

Everything here is what the ``metarl`` command does, as functions that return objects::

    import metarl

    run = metarl.train(out="runs/nav", overrides=["iterations=20"])
    result = metarl.evaluate(run)                  # adaptation curve on held-out tasks
    policy = metarl.load_policy(run)
    task = policy.sample_tasks(1, seed=0)[0]
    adapted = policy.adapt(task, steps=1)          # policy-gradient steps on fresh episodes
    adapted.mean_return(task)

A run is a directory (``out``); anything a config can say, ``overrides`` (``"key=value"``
strings, as ``--set``) can say. Errors are the CLI's: :class:`~metarl.config.ConfigError` for a
bad config, :class:`~metarl.trainer.CheckpointError` for a missing or damaged run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.config import ConfigError, RLConfig, SamplerConfig, with_overrides
from metarl.experiments import KINDS, EvalOptions, EvalResult
from metarl.rl.evaluation import adapt_step, step_lrs
from metarl.rl.learners import advantages_of, make_policy, task_env
from metarl.rl.policies import Params, Policy
from metarl.rl.sampling import make_sampler
from metarl.rl.sampling.envs import make_env
from metarl.trainer import Checkpoint, Trainer, load_checkpoint, load_train_config

__all__ = ["Run", "TrainedPolicy", "evaluate", "load_policy", "load_run", "train"]


@dataclass(frozen=True)
class Run:
    """A run directory and the checkpoint it holds."""

    path: Path
    """The run directory."""
    config: Any
    """The run's resolved config (a frozen dataclass of its ``kind``)."""
    iteration: int
    """The iteration of the checkpoint."""
    checkpoint: str = "last"
    """Which checkpoint: ``last``, ``best`` or an iteration (``checkpoint_keep``)."""


def load_run(path: str | Path, checkpoint: str | int = "last") -> Run:
    """The run in ``path`` (its ``checkpoint``: ``"last"``, ``"best"`` or an iteration)."""
    ckpt = _checkpoint(path, checkpoint)
    return Run(Path(path), ckpt.config, ckpt.iteration, str(checkpoint))


def train(
    config: str | Path | Any | None = None,
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    progress: bool = False,
) -> Run:
    """Train a run into ``out`` (a new or empty directory; ``resume`` continues the run there).

    ``config``: a YAML file, a config object, or None for the built-in default (MAML-TRPO on
    2-D navigation with the paper's protocol; with ``resume``, the run's own config).
    ``progress``: a progress bar on a terminal, plain log lines elsewhere (``logging``, level
    INFO); off by default.
    """
    if config is None or isinstance(config, str | Path):
        cfg = load_train_config(config, out, resume, overrides)
    else:
        cfg = with_overrides(config, overrides)
    kind = KINDS[cfg.kind]
    Trainer(
        config=cfg,
        run_dir=out,
        make_learner=kind.make_learner,
        progress=progress,
        progress_keys=kind.progress_keys,
        best_by=kind.best_by(cfg),
    ).run(resume=resume)
    return load_run(out)


def evaluate(
    run: Run | str | Path,
    *,
    compare: Sequence[Run | str | Path] = (),
    num_tasks: int | None = None,
    steps: int | None = None,
    episodes: int | None = None,
    batch: str | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
) -> EvalResult:
    """The adaptation curve of ``run`` (and of every ``compare`` run, on the same held-out
    tasks): ``result.rows`` holds, per method and step, the mean and the 95% confidence
    half-width over tasks of the return (RL), query loss (sinusoid) or accuracy (Omniglot).
    None keeps the run's ``eval`` settings (RL: ``episodes`` per task and step, ``batch``
    ``"episodes"`` or ``"steps"``, see ``eval.batch``). ``out``: a directory to write
    ``adaptation.csv`` and ``adaptation.png`` into (nothing is written without it)."""
    runs = [_as_checkpoint(r) for r in (run, *compare)]
    kinds = {r.config.kind for r in runs}
    if len(kinds) > 1:
        raise ConfigError(f"cannot compare runs of different kinds: {sorted(kinds)}")
    options = EvalOptions(
        num_tasks=num_tasks, steps=steps, seed=seed, episodes=episodes, batch=batch
    )
    result = KINDS[runs[0].config.kind].evaluate(runs, options)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        result.write(Path(out) / "adaptation.csv", Path(out) / "adaptation.png")
    return result


def load_policy(run: Run | str | Path) -> TrainedPolicy:
    """The trained policy of an RL run, on the CPU, ready to act and to adapt."""
    ckpt = _as_checkpoint(run)
    if not isinstance(ckpt.config, RLConfig):
        raise ConfigError(f"{str(ckpt.path)!r} is a {ckpt.config.kind!r} run, not an RL one")
    config = dataclasses.replace(ckpt.config, device="cpu")
    params = {k: v.detach().to("cpu") for k, v in ckpt.learner["params"].items()}
    return TrainedPolicy(config, params)


class TrainedPolicy:
    """A policy and its weights, acting in the env as training saw it (:meth:`make_env`)."""

    def __init__(self, config: RLConfig, params: Params) -> None:
        self.config = config
        """The run's config (the env id, the policy's architecture, the test-time lr)."""
        self.params = params
        """The weights (``dict[str, Tensor]``, CPU)."""
        self.policy: Policy = make_policy(config, self.make_env())
        """The network and its distribution head."""

    def make_env(self, task: Any = None) -> gym.Env[Any, Any]:
        """The task env the policy acts in: actions normalized to [-1, 1] if the run was, the
        task in the observation for an oracle; set to ``task`` when given."""
        c = self.config
        env = make_env(
            c.env.id,
            env_kwargs=c.env.kwargs,
            oracle=c.method == "oracle",
            normalize_actions=c.env.normalize_actions,
        )
        if task is not None:
            task_env(env, c.env.id).set_task(task)
        return env

    def sample_tasks(self, num_tasks: int, *, seed: int = 0) -> list[Any]:
        """Tasks drawn from the env's task distribution with ``seed``."""
        env = self.make_env()
        try:
            return task_env(env, self.config.env.id).sample_tasks(
                num_tasks, np.random.default_rng(seed)
            )
        finally:
            env.close()

    def act(
        self, observation: Any, *, deterministic: bool = False, seed: int | None = None
    ) -> np.ndarray:
        """The action for one observation (or a batch ``[N, obs_dim]``): the distribution's
        mean (Gaussian) or most likely action (categorical) when ``deterministic``, else a
        draw (seeded with ``seed`` if given)."""
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32)
        batch = obs.reshape(-1, obs.shape[-1])
        with torch.no_grad():
            stats = self.policy.dist_stats(self.params, batch)
            if deterministic:
                action = stats["mean"] if "mean" in stats else stats["log_probs"].argmax(-1)
            else:
                generator = torch.Generator()
                generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**62))
                noise = self.policy.draw_noise((batch.shape[0],), generator)
                action, _ = self.policy.act_from_stats(stats, noise)
        out = action.numpy()
        return out if obs.dim() > 1 else out[0]

    def adapt(
        self,
        task: Any,
        *,
        steps: int = 1,
        episodes: int | None = None,
        lr: float | Sequence[float] | None = None,
        seed: int = 0,
    ) -> TrainedPolicy:
        """The policy after ``steps`` policy-gradient steps on ``task``, each on ``episodes``
        fresh episodes (default: the run's ``eval.episodes_per_task``) sampled with the
        current weights, as ``metarl evaluate`` fine-tunes (lr default: the run's test-time
        rates, ``eval.lr``). This policy is left as it is."""
        rates = _rates(self.config, lr, steps)
        params = {k: v.unsqueeze(0) for k, v in self.params.items()}  # one task
        with self._sampler(episodes) as sampler:
            for step, rate in enumerate(rates):
                batch = self._sample(sampler, task, params, seed, step)
                params = adapt_step(
                    self.policy, params, batch, advantages_of(self.config, batch), rate
                )
        return TrainedPolicy(self.config, {k: v[0] for k, v in params.items()})

    def mean_return(self, task: Any, *, episodes: int | None = None, seed: int = 0) -> float:
        """The mean undiscounted return of ``episodes`` fresh episodes on ``task``."""
        params = {k: v.unsqueeze(0) for k, v in self.params.items()}
        with self._sampler(episodes) as sampler:
            batch = self._sample(sampler, task, params, seed, step=-1)
        return float(batch.returns.double().mean())

    def _sampler(self, episodes: int | None) -> Any:
        c = self.config
        return make_sampler(
            SamplerConfig(backend="local"),
            env_id=c.env.id,
            env_kwargs=c.env.kwargs,
            num_tasks=1,
            episodes_per_task=episodes or c.eval.episodes_per_task,
            horizon=c.env.horizon,
            oracle=c.method == "oracle",
            normalize_actions=c.env.normalize_actions,
        )

    def _sample(self, sampler: Any, task: Any, params: Params, seed: int, step: int) -> Any:
        seeds = np.random.SeedSequence([seed, step + 1]).generate_state(2)
        generator = torch.Generator().manual_seed(int(seeds[0]))
        return sampler.sample(
            self.policy, params, [task], generator=generator, seed=int(seeds[1]),
            per_task_params=True,
        )  # fmt: skip


def _rates(config: RLConfig, lr: float | Sequence[float] | None, steps: int) -> list[float]:
    """The lr of each of ``steps`` steps: ``lr`` (one value, or one per step, the last
    repeating), or the run's test-time rates."""
    if steps < 0:
        raise ValueError(f"adapt: steps must be >= 0, got {steps}")
    if lr is None:
        return step_lrs(dataclasses.replace(config.eval, max_steps=steps), config.inner.lr)
    given = [float(lr)] if isinstance(lr, int | float) else [float(x) for x in lr]
    if not given or min(given) <= 0:
        raise ValueError(f"adapt: lr must be > 0, got {lr!r}")
    return [given[min(i, len(given) - 1)] for i in range(steps)]


def _checkpoint(path: str | Path, which: str | int) -> Checkpoint:
    return load_checkpoint(path, str(which))


def _as_checkpoint(run: Run | str | Path) -> Checkpoint:
    if isinstance(run, Run):
        return _checkpoint(run.path, run.checkpoint)
    return _checkpoint(run, "last")
