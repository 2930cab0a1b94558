"""``metarl train | evaluate | plot | config``: thin commands over the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from metarl.config import ConfigError, config_from_dict, load_config, read_yaml, saved_config_data
from metarl.errors import RunDirError, StepError
from metarl.evaluation import figure_format, plot_learning_curves
from metarl.experiments import KINDS, EvalOptions, EvalResult
from metarl.loggers import read_progress
from metarl.trainer import (
    CONFIG,
    PROGRESS,
    Checkpoint,
    CheckpointError,
    Interrupted,
    Trainer,
    TrainingError,
    check_output_file,
    deferred_signals,
    load_checkpoint,
    load_train_config,
    make_dirs,
    remove_dirs,
    stop_signals,
)

log = logging.getLogger("metarl")


def version() -> str:
    """``metarl 0.1.0 (Python 3.11.7, torch 2.13.0, gymnasium 1.2.0)``: for bug reports."""
    import platform

    import gymnasium

    import metarl

    return (
        f"metarl {metarl.__version__} (Python {platform.python_version()}, "
        f"torch {torch.__version__}, gymnasium {gymnasium.__version__})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarl", description=__doc__)
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub.add_parser("train", help="train a run from a config"))
    _evaluate_parser(sub.add_parser("evaluate", help="adaptation curves of a trained run"))
    _config_parser(sub.add_parser("config", help="explain configs: one resolved, or every key"))
    plot = sub.add_parser("plot", help="learning curves from the logs of runs")
    plot.add_argument("run_dirs", nargs="+", type=Path)
    plot.add_argument("--out", required=True, type=Path, help="figure to write (.png, .pdf, ...)")
    plot.add_argument(
        "--keys",
        default="",
        help="comma-separated columns of progress.csv, one axis per unit (default: the "
        "kind's headline statistics)",
    )
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )


def _add_device(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help=f"where {what} computes (overrides the config key device; auto: CUDA if "
        "available); envs step on the CPU",
    )


def _train_parser(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "config",
        nargs="?",
        help="YAML config (default: the built-in one; with --resume, the run's own config.yaml)",
    )
    train.add_argument("--out", required=True, type=Path, help="run directory")
    _add_overrides(train)
    _add_device(train, "the learner")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar: one plain line per log row instead (what a log file or a "
        "pipe gets anyway)",
    )
    train.add_argument(
        "--quiet", "-q", action="store_true", help="only warnings and errors on stderr"
    )


def _evaluate_parser(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("run_dir", type=Path)
    ev.add_argument(
        "--compare",
        nargs="*",
        type=Path,
        default=[],
        help="other runs (e.g. a pretrained baseline) drawn in the same figure",
    )
    ev.add_argument("--num-tasks", type=int, help="held-out tasks (default from the config)")
    ev.add_argument("--steps", type=int, help="gradient steps (default from the config)")
    ev.add_argument("--seed", type=int, help="seed of the held-out tasks")
    ev.add_argument("--episodes", type=int, help="RL: episodes (sub-envs) per task and step")
    ev.add_argument(
        "--batch",
        choices=("episodes", "steps"),
        help="RL: a test batch of one episode per sub-env, or of episodes x horizon env steps "
        "(the paper's; default from the config: eval.batch)",
    )
    _add_device(ev, "the fine-tuning of every run")
    ev.add_argument(
        "--checkpoint",
        default="last",
        metavar="best|last|N",
        help="the checkpoint of RUN_DIR to evaluate: last (checkpoint.pt, the default), best "
        "or iteration N (kept with the config key checkpoint_keep); --compare runs: their last",
    )
    ev.add_argument(
        "--out",
        type=Path,
        help="directory for adaptation.csv/.png (default RUN_DIR; created if missing; a "
        "previous evaluation's files there are replaced); with --checkpoint best or N: "
        "adaptation_best.*, adaptation_N.*",
    )


def _config_parser(config: argparse.ArgumentParser) -> None:
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="the resolved config as commented YAML: each key's doc, type, bounds and "
        "default, the keys that differ from the defaults marked",
    )
    show.add_argument(
        "config", nargs="?", help="YAML config or run directory (default: the built-in config)"
    )
    _add_overrides(show)
    config_sub.add_parser(
        "docs", help="every key of every kind as Markdown (docs/config.md is its output)"
    )


class Stopped(Exception):
    """A command stopped by a signal: one line for stderr and the shell's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _exit_code(err: KeyboardInterrupt) -> int:
    return err.exit_code if isinstance(err, Interrupted) else 128 + signal.SIGINT


def cmd_train(args: argparse.Namespace) -> None:
    device = [f"device={args.device}"] if args.device else []
    config = load_train_config(args.config, args.out, args.resume, [*args.overrides, *device])
    kind = KINDS[config.kind]
    trainer = Trainer(
        config=config,
        run_dir=args.out,
        make_learner=kind.make_learner,
        progress=False if args.quiet else "lines" if args.no_progress else True,
        progress_keys=kind.progress_keys,
        best_by=kind.best_by(config),
    )
    try:
        trainer.run(resume=args.resume)
    except KeyboardInterrupt as err:
        raise Stopped(_interrupted_training(trainer), _exit_code(err)) from None
    trained = trainer.iteration - trainer.start_iteration
    log.info(
        "trained %d iteration%s (now at %d of %d); run directory %s",
        trained,
        "" if trained == 1 else "s",
        trainer.iteration,
        config.iterations,
        args.out,
    )


def _interrupted_training(trainer: Trainer) -> str:
    """Where an interrupted run stopped and what is kept on disk."""
    kept = trainer.checkpoint_iteration
    if kept is None:
        return "interrupted before training started; nothing was written"
    where = f"in {trainer.run_dir}"
    if trainer.iteration >= trainer.config.iterations:
        return f"interrupted while finishing; the run is complete (iteration {kept}, {where})"
    return (
        f"interrupted at iteration {trainer.iteration + 1}; the last checkpoint "
        f"(iteration {kept}) is kept {where}; continue with --resume"
    )


def _runs_to_evaluate(args: argparse.Namespace, which: str) -> list[Checkpoint]:
    """The checkpoint of RUN_DIR and those of the --compare runs (their last), of one kind,
    with --device in their configs if given."""
    run = load_checkpoint(args.run_dir, which)
    runs = [run, *(load_checkpoint(d) for d in args.compare)]
    for path, other in zip(args.compare, runs[1:], strict=True):
        if other.config.kind != run.config.kind:
            raise ConfigError(
                f"--compare {str(path)!r} is a {other.config.kind!r} run; "
                f"{str(args.run_dir)!r} is a {run.config.kind!r} run"
            )
    if args.device:
        runs = [replace(r, config=replace(r.config, device=args.device)) for r in runs]
    return runs


def cmd_evaluate(args: argparse.Namespace) -> None:
    which = str(int(args.checkpoint)) if args.checkpoint.isdigit() else args.checkpoint
    runs = _runs_to_evaluate(args, which)
    run = runs[0]
    out_dir = args.out if args.out is not None else args.run_dir
    created = make_dirs(out_dir, "--out directory") if args.out is not None else []
    try:
        stem = "adaptation" if which == "last" else f"adaptation_{which}"
        paths = (out_dir / f"{stem}.csv", out_dir / f"{stem}.png")
        for path in paths:  # before the evaluation, not after it
            check_output_file(path, "output")
        result = _evaluate(runs, args)
    except BaseException:
        remove_dirs(created)
        raise
    if which != "last":
        what = "best checkpoint" if which == "best" else "checkpoint"
        result = replace(result, title=f"{result.title}, {what} (iteration {run.iteration})")
    replaced = [p for p in paths if p.exists()]
    with deferred_signals():  # both files or, if the writing fails, an error naming them
        result.write(*paths)
    print(_table(result.rows, result.metric))
    again = " (replacing the previous evaluation's)" if replaced else ""
    log.info("wrote %s and %s%s", *paths, again)


def _evaluate(runs: Sequence[Checkpoint], args: argparse.Namespace) -> EvalResult:
    log.info("evaluating %s (iteration %d)", runs[0].path, runs[0].iteration)
    options = EvalOptions(
        num_tasks=args.num_tasks,
        steps=args.steps,
        seed=args.seed,
        episodes=args.episodes,
        batch=args.batch,
    )
    try:
        return KINDS[runs[0].config.kind].evaluate(runs, options)
    except KeyboardInterrupt as err:
        raise Stopped("interrupted; nothing was written", _exit_code(err)) from None


def _table(rows: Sequence[dict[str, object]], metric: str) -> str:
    keys = [k for k in rows[0] if k not in ("num_tasks",)]
    lines = ["  ".join(f"{k:>14}" for k in keys)]
    for r in rows:
        lines.append(
            "  ".join(
                f"{v:>14.4f}" if isinstance(v, float) else f"{v!s:>14}"
                for v in (r[k] for k in keys)
            )
        )
    return "\n".join(lines)


def cmd_plot(args: argparse.Namespace) -> None:
    check_output_file(args.out, "--out")
    try:
        figure_format(args.out)
    except ValueError as err:
        raise RunDirError(f"--out {err}") from None
    runs = {}
    for d in args.run_dirs:
        path = d / PROGRESS
        if not path.is_file():
            raise CheckpointError(f"{str(d)!r} holds no {PROGRESS}; is it a run directory?")
        header, records = read_progress(path, up_to=sys.maxsize)
        runs[d.name or str(d)] = [dict(zip(header, r, strict=True)) for r in records]
    columns = [k for rows in runs.values() for k in (rows[0] if rows else {})]
    available = [k for k in dict.fromkeys(columns) if k != "iteration"]
    configs = [_run_config(d) for d in args.run_dirs]
    kind = KINDS.get(configs[0].kind) if configs[0] is not None else None
    preferred = [k for k in kind.progress_keys if k in available] if kind else []
    keys = [k for k in args.keys.split(",") if k] or preferred or available
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise ConfigError(f"--keys {unknown} not in the logs; available: {', '.join(available)}")
    described = [KINDS[c.kind].describe(c) for c in configs if c is not None and c.kind in KINDS]
    title = "learning curves: " + "; ".join(dict.fromkeys(described)) if described else ""
    unit_labels = {"loss": kind.loss_label} if kind else None
    plot_learning_curves(args.out, runs, keys=keys, title=title, unit_labels=unit_labels)
    log.info("wrote %s", args.out)


def _run_config(run_dir: Path) -> Any:
    """The config a run directory ran with, or None when it has no readable one (the logs
    are drawn all the same)."""
    path = run_dir / CONFIG
    try:
        return config_from_dict(saved_config_data(read_yaml(path))) if path.is_file() else None
    except ConfigError:
        return None


def search_working_directory() -> None:
    """Let a config name a module of the working directory (``env.id: "mymodule:Name-v0"``),
    as ``python -m`` would: the directory is searched after the installed packages, so a file
    there never shadows one of them. (A file-defined env needs no path: ``"file.py:Name-v0"``.)
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def cmd_config(args: argparse.Namespace) -> None:
    from metarl.config_docs import config_reference, describe_config

    if args.config_command == "docs":
        print(config_reference(), end="")
        return
    path, saved = args.config, False
    if path is not None and Path(path).is_dir():  # a run directory: the config it ran with
        path, saved = Path(path) / CONFIG, True
    print(describe_config(load_config(path, args.overrides, saved=saved)), end="")


USER_ERRORS = (ConfigError, CheckpointError, TrainingError, StepError, RunDirError)
"""Errors whose message is the whole story: one line on stderr, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metarl`` console script.

    Exit codes: 0 done, 2 an error (one line on stderr), 130/143 stopped by SIGINT/SIGTERM.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    search_working_directory()
    args = _parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "plot": cmd_plot}
    commands["config"] = cmd_config
    prefix = " ".join(["metarl", args.command, getattr(args, "config_command", "")]).strip()
    level = log.level
    if getattr(args, "quiet", False):
        log.setLevel(logging.WARNING)
    try:
        with stop_signals():
            commands[args.command](args)
    except Stopped as stop:
        print(f"{prefix}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt as err:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return _exit_code(err)
    except USER_ERRORS as err:
        print(f"{prefix}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the checks before could not foresee
        name = f" {err.filename}" if err.filename else ""
        print(f"{prefix}: error:{name}: {err.strerror or err}", file=sys.stderr)
        return 2
    finally:
        log.setLevel(level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
