"""The iteration loop: owns the RNGs, checkpoints atomically, resumes exactly, hands stats on."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from metarl.config import ConfigError, config_diff, config_from_dict, config_to_dict, save_config
from metarl.errors import StepError
from metarl.loggers import CSVLogger, Logger, ProgressBar, TensorBoardLogger
from metarl.rngs import Rngs

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
PROGRESS = "progress.csv"
CHECKPOINT_FORMAT = 1

# Keys that may change when a run is resumed (e.g. to train for longer, or with a lower
# meta_lr for the last iterations: the supervised learners keep Adam's moments and take the
# new rate).
RESUMABLE_CHANGES = frozenset(
    {"iterations", "log_every", "checkpoint_every", "meta_lr", "learner_threads"}
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A run directory without a usable checkpoint."""


class Learner(Protocol):
    """One algorithm's state and its update; the trainer calls ``step`` once per iteration."""

    def step(self, rngs: Rngs) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the learner holds (e.g. sampler worker processes)."""
        ...


LearnerFactory = Callable[[Any, Rngs], Learner]


@dataclass(frozen=True)
class Checkpoint:
    """What a run directory's checkpoint holds."""

    config: Any
    iteration: int
    learner: dict[str, Any]
    rngs: dict[str, Any]


def save_checkpoint(
    path: Path, *, config: Any, iteration: int, learner: Learner, rngs: Rngs
) -> None:
    """Write the checkpoint atomically: a crash mid-write leaves the previous one intact."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(config),
        "iteration": iteration,
        "learner": learner.state_dict(),
        "rngs": rngs.state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``RUNDIR/checkpoint.pt`` with a clear error when it is missing or unreadable."""
    path = Path(run_dir) / CHECKPOINT
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no checkpoint ({CHECKPOINT}); "
            "train first with `metarl train CONFIG --out RUNDIR`"
        )
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a metarl "
            f"checkpoint: {type(err).__name__}: {err}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a metarl checkpoint (format {CHECKPOINT_FORMAT})"
        )
    try:
        config = config_from_dict(payload["config"])
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid config: {err}") from None
    return Checkpoint(
        config=config,
        iteration=int(payload["iteration"]),
        learner=payload["learner"],
        rngs=payload["rngs"],
    )


def check_finite(iteration: int, stats: Mapping[str, float], last_good: str) -> None:
    """Stop with a clear error if any statistic is NaN or infinite."""
    bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
    if bad:
        raise TrainingError(
            f"iteration {iteration}: non-finite {bad}; training stopped. "
            f"The last good checkpoint is kept: {last_good}"
        )


class Trainer:
    """Runs ``config.iterations`` learner steps in ``run_dir`` with logs and checkpoints."""

    def __init__(
        self,
        *,
        config: Any,
        run_dir: str | Path,
        make_learner: LearnerFactory,
        loggers: Sequence[Logger] = (),
        progress: bool = True,
        progress_keys: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.make_learner = make_learner
        self.extra_loggers = list(loggers)
        self.progress = progress
        self.progress_keys = progress_keys

    def _start(self, resume: bool) -> tuple[Learner, Rngs, int]:
        ckpt_path = self.run_dir / CHECKPOINT
        if not resume and ckpt_path.exists():
            raise CheckpointError(
                f"{str(self.run_dir)!r} already holds a run; pass --resume to "
                "continue it, or choose another --out"
            )
        rngs = Rngs.from_seed(self.config.seed)
        learner = self.make_learner(self.config, rngs)
        if not resume:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / CONFIG)
            return learner, rngs, 0
        ckpt = load_checkpoint(self.run_dir)
        changed = [k for k in config_diff(ckpt.config, self.config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"cannot resume {str(self.run_dir)!r} with a different config: "
                f"{', '.join(changed)} differ (only {sorted(RESUMABLE_CHANGES)} "
                "may change on resume)"
            )
        learner.load_state_dict(ckpt.learner)
        rngs.restore(ckpt.rngs)
        save_config(self.config, self.run_dir / CONFIG)
        log.info("resuming %s at iteration %d", self.run_dir, ckpt.iteration)
        return learner, rngs, ckpt.iteration

    def run(self, *, resume: bool = False) -> Learner:
        """Train to ``config.iterations``; returns the learner."""
        learner, rngs, start = self._start(resume)
        cfg = self.config
        loggers: list[Logger] = [
            CSVLogger(self.run_dir / PROGRESS, resume_at=start if resume else None),
            TensorBoardLogger(self.run_dir / "tb"),
            *self.extra_loggers,
        ]
        bar = None
        if self.progress:
            bar = ProgressBar(total=cfg.iterations, initial=start, keys=self.progress_keys)
            loggers.append(bar)
        window = _Window()
        last_good = f"{self.run_dir / CHECKPOINT} (iteration {start})"
        try:
            for it in range(start, cfg.iterations):
                try:
                    stats = learner.step(rngs)
                except (FloatingPointError, StepError) as err:  # a NaN observation, dead workers
                    raise TrainingError(
                        f"iteration {it + 1}: {err}; training stopped. The last "
                        f"good checkpoint is kept: {last_good}"
                    ) from err
                check_finite(it + 1, stats, last_good)
                window.add(stats)
                done = it + 1
                if done % cfg.log_every == 0 or done == cfg.iterations:
                    for logger in loggers:
                        logger.log(done, window.mean())
                    window = _Window()
                if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                    save_checkpoint(
                        self.run_dir / CHECKPOINT,
                        config=cfg,
                        iteration=done,
                        learner=learner,
                        rngs=rngs,
                    )
                    last_good = f"{self.run_dir / CHECKPOINT} (iteration {done})"
                if bar is not None:
                    bar.update()
        finally:
            for logger in loggers:
                logger.close()
            learner.close()
        return learner


class _Window:
    """Running means of the statistics since the last log row."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, stats: Mapping[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()}
