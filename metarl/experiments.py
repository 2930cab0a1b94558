"""What each experiment kind plugs into the trainer and the evaluator.

The CLI looks up the config's ``kind`` here; a new kind (RL, Omniglot, ...) adds one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metarl.config import with_overrides
from metarl.rngs import Rngs
from metarl.trainer import Checkpoint, Learner


@dataclass(frozen=True)
class EvalOptions:
    """Command-line settings of ``metarl evaluate`` (None keeps the run's config value)."""

    num_tasks: int | None = None
    steps: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class EvalResult:
    """Adaptation-curve rows and how to draw them."""

    rows: list[dict[str, Any]]
    metric: str
    ylabel: str
    panel_key: str | None = None
    title: str = ""


@dataclass(frozen=True)
class ExperimentKind:
    """The learner and evaluator of one experiment kind."""

    make_learner: Callable[[Any, Rngs], Learner]
    evaluate: Callable[[Sequence[Checkpoint], EvalOptions], EvalResult]
    progress_keys: tuple[str, ...]


def _sinusoid_learner(config: Any, rngs: Rngs) -> Learner:
    from metarl.supervised.sinusoid import SinusoidLearner

    return SinusoidLearner(config, rngs)


def _sinusoid_evaluate(runs: Sequence[Checkpoint], options: EvalOptions) -> EvalResult:
    from metarl.supervised.sinusoid import evaluate_sinusoid

    overrides = [
        f"eval.{key}={value}"
        for key, value in (
            ("num_tasks", options.num_tasks),
            ("max_steps", options.steps),
            ("seed", options.seed),
        )
        if value is not None
    ]
    eval_cfg = with_overrides(runs[0].config, overrides).eval
    rows = evaluate_sinusoid([(r.config, r.learner["params"]) for r in runs], eval_cfg)
    return EvalResult(
        rows=rows, metric="loss", ylabel="query MSE", panel_key="shots", title="sinusoid"
    )


def _rl_learner(config: Any, rngs: Rngs) -> Learner:
    from metarl.rl import MAMLTRPOLearner

    return MAMLTRPOLearner(config, rngs)


def _rl_evaluate(runs: Sequence[Checkpoint], options: EvalOptions) -> EvalResult:
    from metarl.rl import evaluate_rl

    overrides = [
        f"eval.{key}={value}"
        for key, value in (
            ("num_tasks", options.num_tasks),
            ("max_steps", options.steps),
            ("seed", options.seed),
        )
        if value is not None
    ]
    eval_cfg = with_overrides(runs[0].config, overrides).eval
    rows = evaluate_rl([(r.config, r.learner["params"]) for r in runs], eval_cfg)
    return EvalResult(
        rows=rows, metric="return", ylabel="average return", title=runs[0].config.env.id
    )


KINDS: dict[str, ExperimentKind] = {
    "sinusoid": ExperimentKind(
        make_learner=_sinusoid_learner,
        evaluate=_sinusoid_evaluate,
        progress_keys=("pre_adapt_query_loss", "post_adapt_query_loss", "train_loss"),
    ),
    "rl": ExperimentKind(
        make_learner=_rl_learner,
        evaluate=_rl_evaluate,
        progress_keys=("pre_adapt_return", "post_adapt_return"),
    ),
}
