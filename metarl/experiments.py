"""What each experiment kind plugs into the trainer and the evaluator.

The CLI looks up the config's ``kind`` here; a new kind (Omniglot, ...) adds one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metarl.config import ConfigError, with_overrides
from metarl.evaluation import plot_curves, write_rows
from metarl.rngs import Rngs
from metarl.trainer import BestBy, Checkpoint, Learner


@dataclass(frozen=True)
class EvalOptions:
    """Command-line settings of ``metarl evaluate`` (None keeps the run's config value)."""

    num_tasks: int | None = None
    steps: int | None = None
    seed: int | None = None
    episodes: int | None = None
    batch: str | None = None


@dataclass(frozen=True)
class EvalResult:
    """Adaptation-curve rows and how to draw them."""

    rows: list[dict[str, Any]]
    metric: str
    ylabel: str
    panel_key: str | None = None
    title: str = ""
    xlabel: str = "gradient steps at test time"

    def write(self, csv_path: Path, png_path: Path) -> None:
        """The rows as CSV and the curves as a figure."""
        write_rows(csv_path, self.rows)
        plot_curves(
            png_path,
            self.rows,
            metric=self.metric,
            ylabel=self.ylabel,
            panel_key=self.panel_key,
            title=self.title,
            xlabel=self.xlabel,
        )


@dataclass(frozen=True)
class ExperimentKind:
    """The learner and evaluator of one experiment kind."""

    make_learner: Callable[[Any, Rngs], Learner]
    evaluate: Callable[[Sequence[Checkpoint], EvalOptions], EvalResult]
    progress_keys: tuple[str, ...]
    """The headline statistics: the progress lines and bar show them, ``metarl plot`` draws
    them by default."""
    describe: Callable[[Any], str]
    """A few words on what a config of this kind trains (figure titles)."""
    best_by: Callable[[Any], BestBy]
    """The headline statistic that picks ``checkpoint_best.pt`` (``checkpoint_keep``)."""
    loss_label: str = "loss"
    """What this kind's logged losses are (the learning curves' y label)."""


def _eval_config(config: Any, options: EvalOptions, episodes_key: str | None) -> Any:
    """The run's ``eval`` section with the command line's values, validated like a config."""
    for flag, value in (("--episodes", options.episodes), ("--batch", options.batch)):
        if value is not None and episodes_key is None:
            raise ConfigError(f"{flag} does not apply to {config.kind!r} runs")
    values: dict[str, int | str | None] = {
        "num_tasks": options.num_tasks,
        "max_steps": options.steps,
        "seed": options.seed,
    }
    if episodes_key is not None:
        values[episodes_key] = options.episodes
        values["batch"] = options.batch
    overrides = [f"eval.{k}={v}" for k, v in values.items() if v is not None]
    return with_overrides(config, overrides).eval


def _sinusoid_learner(config: Any, rngs: Rngs) -> Learner:
    from metarl.supervised.sinusoid import SinusoidLearner

    return SinusoidLearner(config, rngs)


def _sinusoid_evaluate(runs: Sequence[Checkpoint], options: EvalOptions) -> EvalResult:
    from metarl.supervised.sinusoid import evaluate_sinusoid

    eval_cfg = _eval_config(runs[0].config, options, episodes_key=None)
    rows = evaluate_sinusoid([(r.config, r.learner["params"]) for r in runs], eval_cfg)
    return EvalResult(
        rows=rows,
        metric="loss",
        ylabel="query mean squared error",
        panel_key="shots",
        title="sinusoid",
    )


def _check_env(config: Any) -> None:
    """An unknown env id, an env that does not follow the task protocol, or constructor
    arguments it does not take are errors of the config key 'env.id' or 'env.kwargs' (named),
    not a traceback from the sampler mid-run."""
    from metarl.rl.sampling.envs import check_env_kwargs, make_env, make_vector_env, resolve_env_id
    from metarl.tasks import TaskEnvError, check_task_protocol

    try:
        resolve_env_id(config.env.id)
    except ValueError as err:
        raise ConfigError(f"config key 'env.id': {err}") from None
    kwargs = config.env.kwargs
    try:
        check_env_kwargs(kwargs)
    except ValueError as err:
        raise ConfigError(f"config key 'env.kwargs': {err}") from None
    key, given = ("env.kwargs", f" with {kwargs}") if kwargs else ("env.id", "")
    try:
        if kwargs:  # the batched vector env (when the env has one) must take them too
            make_vector_env(config.env.id, 1, env_kwargs=kwargs).close()
        env = make_env(config.env.id, env_kwargs=kwargs)
    except Exception as err:  # a user's env whose constructor fails, or an unknown keyword
        raise ConfigError(
            f"config key '{key}': making {config.env.id!r}{given} raised "
            f"{type(err).__name__}: {err}"
        ) from None
    try:
        check_task_protocol(env)
    except TaskEnvError as err:
        raise ConfigError(
            f"config key 'env.id': {config.env.id!r} is not a task env: {err}"
        ) from None
    finally:
        env.close()


def _check_sampler(config: Any, num_tasks: int, episodes: int, keys: tuple[str, str]) -> None:
    """Ray workers own whole tasks and worker processes whole sub-envs: more workers than
    those is an error of 'sampler.num_workers'. ``keys`` name the sizes in the config."""
    s = config.sampler
    if s.backend == "ray" and s.num_workers > num_tasks:
        raise ConfigError(
            f"config key 'sampler.num_workers': {s.num_workers} Ray workers for {num_tasks} "
            f"tasks ({keys[0]}); each worker owns whole tasks, so at most one per task"
        )
    num_envs = num_tasks * episodes
    if s.backend == "processes" and s.num_workers > num_envs:
        raise ConfigError(
            f"config key 'sampler.num_workers': {s.num_workers} worker processes for "
            f"{num_envs} sub-envs ({keys[0]} x {keys[1]} = {num_tasks} x {episodes}); each "
            f"worker steps at least one, so at most {num_envs}"
        )


def _rl_learner(config: Any, rngs: Rngs) -> Learner:
    from metarl.rl.learners import make_rl_learner

    keys = ("meta_batch_size", "episodes_per_task")
    _check_sampler(config, config.meta_batch_size, config.episodes_per_task, keys)
    _check_env(config)
    return make_rl_learner(config, rngs)


def _rl_evaluate(runs: Sequence[Checkpoint], options: EvalOptions) -> EvalResult:
    from metarl.rl.evaluation import evaluate_rl

    eval_cfg = _eval_config(runs[0].config, options, episodes_key="episodes_per_task")
    for run in runs:
        if run.config.env.id != runs[0].config.env.id:
            raise ConfigError(
                f"cannot compare runs on {run.config.env.id!r} and {runs[0].config.env.id!r}"
            )
    keys = ("eval.num_tasks", "eval.episodes_per_task")
    _check_sampler(runs[0].config, eval_cfg.num_tasks, eval_cfg.episodes_per_task, keys)
    _check_env(runs[0].config)
    rows = evaluate_rl([(r.config, r.learner["params"]) for r in runs], eval_cfg)
    return EvalResult(
        rows=rows,
        metric="return",
        ylabel="average return per episode",
        title=runs[0].config.env.id,
        xlabel="policy-gradient steps at test time",
    )


def _omniglot_data_error(err: ValueError) -> ConfigError:
    """A missing or malformed data set is a problem of the config key that names it."""
    return ConfigError(f"config key 'data.root': {err}")


def _omniglot_learner(config: Any, rngs: Rngs) -> Learner:
    from metarl.supervised.omniglot import OmniglotLearner
    from metarl.supervised.omniglot_data import OmniglotDataError

    try:
        return OmniglotLearner(config, rngs)
    except OmniglotDataError as err:
        raise _omniglot_data_error(err) from None


def _omniglot_evaluate(runs: Sequence[Checkpoint], options: EvalOptions) -> EvalResult:
    from metarl.supervised.omniglot import evaluate_omniglot
    from metarl.supervised.omniglot_data import OmniglotDataError

    eval_cfg = _eval_config(runs[0].config, options, episodes_key=None)
    try:
        rows = evaluate_omniglot([(r.config, r.learner["params"]) for r in runs], eval_cfg)
    except OmniglotDataError as err:
        raise _omniglot_data_error(err) from None
    task = runs[0].config.task
    return EvalResult(
        rows=rows,
        metric="accuracy",
        ylabel="query accuracy (fraction correct)",
        title=f"Omniglot {task.ways}-way {task.shots}-shot",
    )


KINDS: dict[str, ExperimentKind] = {
    "sinusoid": ExperimentKind(
        make_learner=_sinusoid_learner,
        evaluate=_sinusoid_evaluate,
        progress_keys=("pre_adapt_query_loss", "post_adapt_query_loss", "train_loss"),
        describe=lambda c: f"sinusoid regression, {c.method}",
        best_by=lambda c: BestBy(
            "post_adapt_query_loss" if c.method == "maml" else "train_loss",
            higher_is_better=False,
        ),
        loss_label="mean squared error",
    ),
    "rl": ExperimentKind(
        make_learner=_rl_learner,
        evaluate=_rl_evaluate,
        progress_keys=("pre_adapt_return", "post_adapt_return"),
        describe=lambda c: f"{c.env.id}, {c.method}",
        best_by=lambda c: BestBy(
            "post_adapt_return" if c.method == "maml" else "pre_adapt_return",
            higher_is_better=True,
        ),
        loss_label="surrogate loss",
    ),
    "omniglot": ExperimentKind(
        make_learner=_omniglot_learner,
        evaluate=_omniglot_evaluate,
        progress_keys=("post_adapt_query_accuracy", "post_adapt_query_loss"),
        describe=lambda c: f"Omniglot {c.task.ways}-way {c.task.shots}-shot",
        best_by=lambda c: BestBy("post_adapt_query_accuracy", higher_is_better=True),
        loss_label="cross-entropy (nats)",
    ),
}
