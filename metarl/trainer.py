"""The iteration loop: owns the RNGs, checkpoints atomically, resumes exactly, hands stats on."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

import torch

from metarl.config import (
    ConfigError,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    saved_config_data,
)
from metarl.errors import RunDirError, StepError, replacing, write_failure
from metarl.loggers import (
    CSVLogger,
    Logger,
    ProgressBar,
    ProgressLines,
    TensorBoardLogger,
    read_progress,
)
from metarl.rngs import Rngs

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
KEPT_CHECKPOINT = re.compile(r"checkpoint_(\d+)\.pt")
"""The numbered checkpoints ``checkpoint_keep`` keeps: ``checkpoint_<iteration>.pt``."""
CONFIG = "config.yaml"
PROGRESS = "progress.csv"
TENSORBOARD = "tb"
CHECKPOINT_FORMAT = 1

# Keys that may change when a run is resumed (e.g. to train for longer, or with a lower
# meta_lr for the last iterations: the supervised learners keep Adam's moments and take the
# new rate).
RESUMABLE_CHANGES = frozenset(
    {
        "iterations",
        "log_every",
        "checkpoint_every",
        "checkpoint_keep",
        "meta_lr",
        "learner_threads",
        "device",
    }
)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A run directory without a usable checkpoint."""


# --------------------------------------------------------------------------- stop signals


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (raised by the handlers :func:`stop_signals` installs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's code for a process the signal stopped: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


class _StopSignals:
    """Which process owns the handlers, and a signal held back by :func:`deferred_signals`."""

    def __init__(self) -> None:
        self.owner: int | None = None
        self.depth = 0
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            return  # a forked sampler worker: its parent stops it (learner.close())
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signum)


_SIGNALS = _StopSignals()


@contextlib.contextmanager
def stop_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, ``signums`` raise :class:`Interrupted` in this process (held back
    until a :func:`deferred_signals` block ends) and are ignored by forked worker processes,
    which their parent closes. A signal the process ignores (SIGINT of a background job)
    stays ignored; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    for signum in signums:
        current = signal.getsignal(signum)
        if current not in (signal.SIG_IGN, _SIGNALS.handle):
            previous[signum] = signal.SIG_DFL if current is None else current
            signal.signal(signum, _SIGNALS.handle)
    owner, _SIGNALS.owner = _SIGNALS.owner, os.getpid()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _SIGNALS.owner = owner


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold a stop signal back until the block ends, so that it never cuts a file in half;
    it is dropped if the block fails (that error stops the run anyway)."""
    _SIGNALS.depth += 1
    try:
        yield
    except BaseException:
        _SIGNALS.depth -= 1
        if not _SIGNALS.depth:
            _SIGNALS.pending = None
        raise
    _SIGNALS.depth -= 1
    if not _SIGNALS.depth and _SIGNALS.pending is not None:
        signum, _SIGNALS.pending = _SIGNALS.pending, None
        raise Interrupted(signum)


# --------------------------------------------------------------------------- directories


def check_writable_dir(path: str | Path, what: str) -> None:
    """A :class:`RunDirError` naming ``what`` unless ``path`` is a directory one can write in
    (tried by creating and removing a file, which file permissions alone do not tell root)."""
    path = Path(path)
    if not path.is_dir():
        blocker = next((p for p in [path, *path.parents] if p.exists()), None)
        why = "does not exist"
        if blocker is not None and not blocker.is_dir():
            why = "is a file" if blocker == path else f"is under {str(blocker)!r}, a file"
        raise RunDirError(f"{what} {str(path)!r} {why}")
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".metarl-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunDirError(f"{what} {str(path)!r} is not writable: {err.strerror}") from None


def check_output_file(path: str | Path, what: str) -> None:
    """A :class:`RunDirError` unless a file can be written at ``path`` (its directory exists
    and is writable, and ``path`` is not a directory)."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{what} {str(path)!r} is a directory")
    check_writable_dir(path.parent, f"{what} {str(path)!r}: directory")


def make_dirs(run_dir: Path, what: str = "run directory") -> list[Path]:
    """Create ``run_dir`` (and missing parents), a writable directory (a :class:`RunDirError`
    naming ``what`` otherwise); the directories created, deepest first."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{what} {str(run_dir)!r} is a file")
    missing = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_dirs(missing)
        blocker = next((p for p in run_dir.parents if p.exists()), None)
        why = err.strerror or type(err).__name__
        if blocker is not None and not blocker.is_dir():
            why = f"{str(blocker)!r} is a file"
        raise RunDirError(f"cannot create {what} {str(run_dir)!r}: {why}") from None
    try:
        check_writable_dir(run_dir, what)
    except RunDirError:
        remove_dirs(missing)
        raise
    return missing


def remove_dirs(dirs: Sequence[Path]) -> None:
    """Remove the (empty) directories :func:`make_dirs` created, deepest first."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run needs a new or empty directory: nothing a user made is overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(
            f"--out {str(run_dir)!r} is a file, not a directory; choose another --out"
        )
    if (run_dir / CHECKPOINT).exists():
        raise CheckpointError(
            f"{str(run_dir)!r} already holds a run; pass --resume to "
            "continue it, or choose another --out"
        )
    names = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise RunDirError(
            f"{str(run_dir)!r} is not empty (it holds {shown}); a new run needs a new or "
            "empty directory: choose another --out"
        )


# --------------------------------------------------------------------------- checkpoints


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
    window: dict[str, Any] | None = None
    """The statistics since the last regular log row (sums and count), so that a resumed run
    writes the rows an unbroken one does; None in checkpoints written before it was kept."""
    best: dict[str, Any] | None = None
    """The best checkpoint so far (``checkpoint_keep``): ``{"key", "value", "iteration"}``;
    None if none was scored (or in checkpoints written before it was kept)."""
    path: Path | None = None
    """The file it was read from."""


@dataclass(frozen=True)
class BestBy:
    """The statistic that picks the best checkpoint (``checkpoint_best.pt``): its mean over
    the iterations since the previous checkpoint, the higher (or lower) the better."""

    key: str
    higher_is_better: bool

    def better(self, value: float, best: Mapping[str, Any] | None) -> bool:
        """Whether ``value`` beats the best so far (any finite value beats none)."""
        if not math.isfinite(value):
            return False
        if best is None or best.get("key") != self.key:
            return True
        old = float(best["value"])
        return value > old if self.higher_is_better else value < old


def save_checkpoint(
    path: Path,
    *,
    config: Any,
    iteration: int,
    learner: Learner,
    rngs: Rngs,
    window: Mapping[str, Any] | None = None,
    best: Mapping[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically: a crash, an interrupt or a full disk mid-write leaves
    the previous one intact and no partial file (a full disk is a :class:`RunDirError`)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config_to_dict(config),
        "iteration": iteration,
        "learner": learner.state_dict(),
        "rngs": rngs.state(),
        "window": dict(window) if window is not None else None,
        "best": dict(best) if best is not None else None,
    }
    try:
        with replacing(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as err:
        what = write_failure(err, path.parent)
        if what is None:
            raise
        raise RunDirError(f"{what}: {path.name} of iteration {iteration} not written") from None


def load_checkpoint(run_dir: str | Path, which: str = "last") -> Checkpoint:
    """Read a checkpoint of ``RUNDIR`` with a clear error when it is missing or unreadable:
    ``which`` is ``last`` (``checkpoint.pt``), ``best`` (``checkpoint_best.pt``) or an
    iteration (``checkpoint_<N>.pt``, or ``checkpoint.pt`` if it is of that iteration); the
    ones other than ``last`` exist with ``checkpoint_keep`` > 0."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no checkpoint ({CHECKPOINT}); "
            "train first with `metarl train CONFIG --out RUNDIR`"
        )
    if which == "last":
        return _read_checkpoint(path)
    if which == "best":
        if not (run_dir / BEST_CHECKPOINT).is_file():
            raise CheckpointError(
                f"{str(run_dir)!r} holds no best checkpoint ({BEST_CHECKPOINT}); {_kept(run_dir)}"
            )
        return _read_checkpoint(run_dir / BEST_CHECKPOINT)
    if not which.isdigit():
        raise CheckpointError(f"checkpoint {which!r}: expected best, last or an iteration number")
    numbered = run_dir / f"checkpoint_{int(which)}.pt"
    if numbered.is_file():
        return _read_checkpoint(numbered)
    last = _read_checkpoint(path)
    if last.iteration == int(which):
        return last
    raise CheckpointError(
        f"{str(run_dir)!r} holds no checkpoint of iteration {int(which)}; {_kept(run_dir)}"
    )


def kept_checkpoints(run_dir: Path) -> list[int]:
    """The iterations of the numbered checkpoints in ``run_dir``, in order."""
    found = (KEPT_CHECKPOINT.fullmatch(p.name) for p in run_dir.glob("checkpoint_*.pt"))
    return sorted(int(m[1]) for m in found if m)


def _kept(run_dir: Path) -> str:
    numbered = kept_checkpoints(run_dir)
    if not numbered and not (run_dir / BEST_CHECKPOINT).is_file():
        return (
            f"it keeps only {CHECKPOINT} (--checkpoint last); train with --set "
            "checkpoint_keep=K (K >= 1) to keep the last K and the best"
        )
    shown = ", ".join(map(str, numbered)) or "none"
    return f"it holds last, {'best, ' if (run_dir / BEST_CHECKPOINT).is_file() else ''}" + (
        f"and the iterations {shown}"
    )


def _read_checkpoint(path: Path) -> Checkpoint:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a metarl checkpoint ({_load_failure(err)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a metarl checkpoint (format {CHECKPOINT_FORMAT})"
        )
    missing = [k for k in ("config", "iteration", "learner", "rngs") if k not in payload]
    if missing or not isinstance(payload["config"], dict):
        raise CheckpointError(
            f"{str(path)!r} is not a metarl checkpoint (no {', '.join(missing) or 'config'})"
        )
    try:
        config = config_from_dict(saved_config_data(payload["config"]))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid config: {err}") from None
    return Checkpoint(
        config=config,
        iteration=int(payload["iteration"]),
        learner=payload["learner"],
        rngs=payload["rngs"],
        window=payload.get("window"),
        best=payload.get("best"),
        path=path,
    )


def _load_failure(err: Exception) -> str:
    """torch's reason in a few words, without its advice to load the file unsafely."""
    text = str(err)
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    if "weights_only" in text or "safe_globals" in text:  # its advice is unsafe loading
        return type(err).__name__
    first = text.split(". ")[0].splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:160]}" if first else type(err).__name__


def check_finite(iteration: int, stats: Mapping[str, float], last_good: str) -> None:
    """Stop with a clear error if any statistic is NaN or infinite."""
    bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
    if bad:
        raise TrainingError(
            f"iteration {iteration}: non-finite {bad}; training stopped. "
            f"The last good checkpoint is kept: {last_good}"
        )


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _Start:
    """Where a run starts: a new directory, or a checkpoint and the log rows kept with it."""

    checkpoint: Checkpoint | None = None
    progress: tuple[list[str], list[list[str]]] = ([], [])
    logged_up_to: int = 0
    created: list[Path] = field(default_factory=list)


class Trainer:
    """Runs ``config.iterations`` learner steps in ``run_dir`` with logs and checkpoints.

    Everything is checked before anything is written: a new run needs a new or empty
    directory, a resumed one a readable checkpoint and log and a config that trains on. A
    stop signal (:class:`Interrupted`) never cuts a log row or a checkpoint in half; the
    learner is closed on every way out. ``start_iteration``, ``iteration`` (the last one
    done) and ``checkpoint_iteration`` (the one on disk) say where a run stopped.
    """

    def __init__(
        self,
        *,
        config: Any,
        run_dir: str | Path,
        make_learner: LearnerFactory,
        loggers: Sequence[Logger] = (),
        progress: bool | Literal["bar", "lines"] = True,
        progress_keys: tuple[str, ...] = (),
        best_by: BestBy | None = None,
    ) -> None:
        """``progress``: ``"bar"`` a tqdm bar; ``"lines"`` one plain log line per log row
        (:class:`~metarl.loggers.ProgressLines`); True the bar when stderr is a terminal, else
        the lines; False neither. ``progress_keys``: the statistics they show (all if empty).
        ``best_by``: with ``config.checkpoint_keep`` > 0, the statistic that picks
        ``checkpoint_best.pt`` (None: no best one is kept)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.make_learner = make_learner
        self.extra_loggers = list(loggers)
        self.progress = progress
        self.progress_keys = progress_keys
        self.best_by = best_by
        self.keep = int(getattr(config, "checkpoint_keep", 0))
        self.best: dict[str, Any] | None = None
        self._interval = _Window()  # the statistics since the last checkpoint
        self.start_iteration = 0
        self.iteration = 0
        self.checkpoint_iteration: int | None = None

    def run(self, *, resume: bool = False) -> Learner:
        """Train to ``config.iterations``; returns the learner."""
        with stop_signals((signal.SIGINT,)):
            start = self._prepare_resume() if resume else self._prepare_new()
            rngs = Rngs.from_seed(self.config.seed)
            try:
                learner = self.make_learner(self.config, rngs)
            except BaseException:
                remove_dirs(start.created)
                raise
            loggers: list[Logger] = []
            try:
                with deferred_signals():
                    window = self._begin(start, learner, rngs, loggers)
                self._loop(learner, rngs, loggers, window)
            finally:
                with deferred_signals():
                    for logger in loggers:
                        logger.close()
                    learner.close()
        return learner

    def _prepare_new(self) -> _Start:
        _check_new_run_dir(self.run_dir)
        return _Start(created=make_dirs(self.run_dir))

    def _prepare_resume(self) -> _Start:
        ckpt = load_checkpoint(self.run_dir)
        changed = [k for k in config_diff(ckpt.config, self.config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"cannot resume {str(self.run_dir)!r} with a different config: "
                f"{', '.join(changed)} differ (only {sorted(RESUMABLE_CHANGES)} "
                "may change on resume)"
            )
        done, wanted = ckpt.iteration, self.config.iterations
        if wanted <= done:
            raise ConfigError(
                f"config key 'iterations': run {str(self.run_dir)!r} is at iteration {done}; "
                f"iterations={wanted} would train nothing; set iterations > {done}"
            )
        check_writable_dir(self.run_dir, "run directory")
        # A row at the checkpoint off the log_every grid was the end-of-run row: the window
        # saved with the checkpoint holds its iterations, so it is written again later.
        logged = done
        if ckpt.window is not None and done % ckpt.config.log_every:
            logged = done - 1
        progress = read_progress(self.run_dir / PROGRESS, up_to=logged)
        self.start_iteration = self.iteration = self.checkpoint_iteration = done
        return _Start(checkpoint=ckpt, progress=progress, logged_up_to=logged)

    def _begin(self, start: _Start, learner: Learner, rngs: Rngs, loggers: list[Logger]) -> _Window:
        """The first writes: config, loggers and, for a new run, the checkpoint of iteration
        0 (so that an interrupted run can always resume). A new run that cannot begin
        leaves its directory as it found it."""
        ckpt = start.checkpoint
        try:
            if ckpt is not None:
                learner.load_state_dict(ckpt.learner)
                rngs.restore(ckpt.rngs)
                self._restore_copies(ckpt)
            save_config(self.config, self.run_dir / CONFIG)
            if ckpt is None:
                self._save(learner, rngs, 0, _Window())
            loggers += [
                CSVLogger(self.run_dir / PROGRESS, keep=start.progress if ckpt else None),
                TensorBoardLogger(
                    self.run_dir / TENSORBOARD,
                    purge_step=start.logged_up_to + 1 if ckpt else None,
                ),
                *self.extra_loggers,
            ]
        except BaseException as err:
            if ckpt is None:
                for logger in loggers:
                    logger.close()
                loggers.clear()
                self._clear_new_run(start.created)
            what = write_failure(err, self.run_dir)
            if what is not None and not isinstance(err, RunDirError):
                raise RunDirError(f"{what}; the run could not start") from None
            raise
        if ckpt is not None:
            log.info("resuming %s at iteration %d", self.run_dir, ckpt.iteration)
        return _Window.from_state(ckpt.window if ckpt else None)

    def _restore_copies(self, ckpt: Checkpoint) -> None:
        """Take the best record on, and redo the copies of the checkpoint a stop may have
        cut off between its writes."""
        self.best = ckpt.best
        if not self.keep:
            return
        if ckpt.iteration not in kept_checkpoints(self.run_dir):
            self._copy_checkpoint(f"checkpoint_{ckpt.iteration}.pt")
        if ckpt.best is not None and ckpt.best.get("iteration") == ckpt.iteration:
            self._copy_checkpoint(BEST_CHECKPOINT)

    def _clear_new_run(self, created: list[Path]) -> None:
        """Remove what a new run wrote into its (new or empty) directory."""
        numbered = [f"checkpoint_{it}.pt" for it in kept_checkpoints(self.run_dir)]
        for name in (CONFIG, PROGRESS, CHECKPOINT, BEST_CHECKPOINT, *numbered):
            with contextlib.suppress(OSError):
                (self.run_dir / name).unlink()
        shutil.rmtree(self.run_dir / TENSORBOARD, ignore_errors=True)
        self.checkpoint_iteration = None
        remove_dirs(created)

    def _loop(self, learner: Learner, rngs: Rngs, loggers: list[Logger], window: _Window) -> None:
        cfg = self.config
        bar = self._progress(loggers)
        for done in range(self.iteration + 1, cfg.iterations + 1):
            stats = self._step(learner, rngs, done)
            with deferred_signals():
                check_finite(done, stats, self.last_good())
                window.add(stats)
                self._interval.add(stats)
                if done % cfg.log_every == 0 or done == cfg.iterations:
                    self._log(loggers, done, window.mean())
                    if done % cfg.log_every == 0:
                        window = _Window()  # an end-of-run row keeps it for a resume
                if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                    self._save(learner, rngs, done, window)
                self.iteration = done
                if bar is not None:
                    bar.update()

    def _progress(self, loggers: list[Logger]) -> ProgressBar | None:
        """Add the progress logger ``progress`` asks for; the bar, if it is one."""
        mode, total = self.progress, self.config.iterations
        if mode is True:
            mode = "bar" if sys.stderr.isatty() else "lines"
        if mode == "lines":
            loggers.append(
                ProgressLines(total=total, initial=self.iteration, keys=self.progress_keys)
            )
        if mode != "bar":
            return None
        bar = ProgressBar(total=total, initial=self.iteration, keys=self.progress_keys)
        loggers.append(bar)
        return bar

    def _step(self, learner: Learner, rngs: Rngs, iteration: int) -> dict[str, float]:
        try:
            return learner.step(rngs)
        except (FloatingPointError, StepError) as err:  # a NaN observation, dead workers
            raise TrainingError(
                f"iteration {iteration}: {err}; training stopped. The last "
                f"good checkpoint is kept: {self.last_good()}"
            ) from err

    def _log(self, loggers: list[Logger], iteration: int, stats: Mapping[str, float]) -> None:
        try:
            for logger in loggers:
                logger.log(iteration, stats)
        except OSError as err:
            raise RunDirError(
                f"iteration {iteration}: {write_failure(err, self.run_dir)}; training "
                f"stopped. The last good checkpoint is kept: {self.last_good()}"
            ) from None

    def _save(self, learner: Learner, rngs: Rngs, iteration: int, window: _Window) -> None:
        """Write checkpoint.pt and, with ``checkpoint_keep``, its numbered copy (dropping the
        oldest beyond ``keep``) and, when it scores best, checkpoint_best.pt."""
        best = self._score(iteration)
        try:
            save_checkpoint(
                self.run_dir / CHECKPOINT,
                config=self.config,
                iteration=iteration,
                learner=learner,
                rngs=rngs,
                window=window.state(),
                best=best or self.best,
            )
            self.checkpoint_iteration = iteration
            if self.keep:
                self._copy_checkpoint(f"checkpoint_{iteration}.pt")
                self._drop_old_checkpoints()
            if best is not None:
                self.best = best
                self._copy_checkpoint(BEST_CHECKPOINT)
        except (RunDirError, OSError) as err:
            if iteration == 0:
                raise
            what = err if isinstance(err, RunDirError) else write_failure(err, self.run_dir) or err
            raise RunDirError(
                f"iteration {iteration}: {what}; training stopped. The last good checkpoint "
                f"is kept: {self.last_good()}"
            ) from None

    def _score(self, iteration: int) -> dict[str, Any] | None:
        """The best record if the iterations since the last checkpoint beat the best so far
        (with ``checkpoint_keep`` and ``best_by``); None otherwise. Starts the next interval."""
        stats, self._interval = self._interval, _Window()
        if not self.keep or self.best_by is None or not stats.count:
            return None
        key = self.best_by.key
        value = stats.mean().get(key)
        if value is None or not self.best_by.better(value, self.best):
            return None
        return {"key": key, "value": value, "iteration": iteration}

    def _copy_checkpoint(self, name: str) -> None:
        """Give checkpoint.pt a second name, atomically (a hard link, else a copy)."""
        target, source = self.run_dir / name, self.run_dir / CHECKPOINT
        if target.exists() and target.samefile(source):
            return  # (a rename onto another link of the same file would do nothing)
        with replacing(target) as tmp:
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)

    def _drop_old_checkpoints(self) -> None:
        for it in kept_checkpoints(self.run_dir)[: -self.keep]:
            (self.run_dir / f"checkpoint_{it}.pt").unlink(missing_ok=True)

    def last_good(self) -> str:
        """The checkpoint on disk, e.g. ``runs/a/checkpoint.pt (iteration 5)``."""
        if self.checkpoint_iteration is None:
            return "none was written"
        return f"{self.run_dir / CHECKPOINT} (iteration {self.checkpoint_iteration})"


class _Window:
    """Running means of the statistics since the last log row."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> _Window:
        window = cls()
        if state:
            window.sums = {str(k): float(v) for k, v in state["sums"].items()}
            window.count = int(state["count"])
        return window

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def add(self, stats: Mapping[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def mean(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()}


def train_config_path(
    config: str | Path | None, out: str | Path, resume: bool
) -> str | Path | None:
    """The config a train command starts from: the one given, else on ``--resume`` the run's
    own ``config.yaml`` (so ``metarl train --out DIR --resume`` continues a run as it was
    started), else None (the built-in default)."""
    if config is None and resume and (Path(out) / CONFIG).is_file():
        return Path(out) / CONFIG
    return config


def load_train_config(
    config: str | Path | None, out: str | Path, resume: bool, overrides: Sequence[str]
) -> Any:
    """The config of a train command (:func:`train_config_path`) with its overrides; a run's
    own ``config.yaml`` is read as saved (:func:`metarl.config.load_config`)."""
    path = train_config_path(config, out, resume)
    saved = path is not None and config is None
    return load_config(path, overrides, saved=saved)
