"""Loggers, passed to the trainer (never global): CSV, TensorBoard, and console progress (a bar
on a terminal, plain lines elsewhere)."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from metarl.errors import RunDirError, replacing


class Logger(Protocol):
    """Receives the statistics of an iteration."""

    def log(self, iteration: int, stats: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class CSVLogger:
    """One row per logged iteration.

    A new run starts the file. A resumed run passes ``keep``, the header and rows up to its
    checkpoint (from :func:`read_progress`), and the file is rewritten with them atomically.
    A row with columns the header lacks (a run resumed by a version of metarl that logs more
    statistics) widens the header, the earlier rows left empty in the new columns.
    """

    def __init__(
        self, path: str | Path, *, keep: tuple[list[str], list[list[str]]] | None = None
    ) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if keep is not None and keep[0]:
            self.columns = keep[0]
            with replacing(self.path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.columns)
                writer.writerows(keep[1])
        elif self.path.exists():
            self.path.unlink()

    def log(self, iteration: int, stats: Mapping[str, float]) -> None:
        row = {"iteration": iteration, **stats}
        new_file = self.columns is None
        if self.columns is None:
            self.columns = list(row)
        extra = [key for key in row if key not in self.columns]
        if extra:
            self._widen(extra)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def _widen(self, extra: list[str]) -> None:
        """Append ``extra`` to the header, rewriting the file atomically."""
        assert self.columns is not None
        with self.path.open(newline="") as f:
            records = list(csv.reader(f))[1:]
        self.columns = self.columns + extra
        with replacing(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(record + [""] * len(extra) for record in records)

    def close(self) -> None:
        pass


def read_progress(path: str | Path, *, up_to: int) -> tuple[list[str], list[list[str]]]:
    """The header and the rows with ``iteration <= up_to`` of a run's ``progress.csv``.

    An unterminated last line (a write cut short by a crash, always past the checkpoint) is
    dropped; any other damage is a :class:`RunDirError` naming the file and the line, and the
    file is left as it is. A missing file gives no header and no rows.
    """
    path = Path(path)
    if not path.exists():
        return [], []

    def damaged(what: str) -> RunDirError:
        return RunDirError(
            f"{path} is damaged ({what}); it was left as it is: repair it or move it away"
        )

    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise damaged("not UTF-8 text") from None
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    try:
        records = list(csv.reader(lines))
    except csv.Error as err:
        raise damaged(str(err)) from None
    if not records:
        return [], []
    header, kept = records[0], []
    if not header or header[0] != "iteration":
        raise damaged(
            f"line 1: the header {','.join(header)[:60]!r} does not start with 'iteration'"
        )
    for number, record in enumerate(records[1:], start=2):
        if len(record) != len(header) or not record[0].isdigit() or not _numbers(record[1:]):
            raise damaged(
                f"line {number}: {','.join(record)[:60]!r} is not a row of {len(header)} numbers"
            )
        if int(record[0]) <= up_to:
            kept.append(record)
    return header, kept


class TensorBoardLogger:
    """Scalars to a TensorBoard event directory."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        """``purge_step``: on resume, the first step to write again; TensorBoard hides the
        events at this and later steps that the interrupted run wrote."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, iteration: int, stats: Mapping[str, float]) -> None:
        for key, value in stats.items():
            self.writer.add_scalar(key, value, iteration)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressBar:
    """A tqdm bar over iterations showing the latest statistics (silent when not a terminal)."""

    def __init__(self, *, total: int, initial: int = 0, keys: tuple[str, ...] = ()) -> None:
        self.keys = keys
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, disable=None)

    def update(self) -> None:
        self.bar.update(1)

    def log(self, iteration: int, stats: Mapping[str, float]) -> None:
        shown = {k: v for k, v in stats.items() if not self.keys or k in self.keys}
        self.bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


class ProgressLines:
    """One plain line per log row through :mod:`logging` (the ``metarl`` command writes it to
    stderr), for output that is not a terminal (a log file, ``make demo``, CI): the iteration,
    the headline statistics (``keys``; all when empty), seconds per iteration since the last
    line, the time elapsed and an estimate of the time left, e.g.
    ``iteration 20/100: pre_adapt_return -40.1, post_adapt_return -35.2 | 9.61 s/iteration,
    elapsed 3m12s, left ~12m49s``."""

    def __init__(
        self,
        *,
        total: int,
        initial: int = 0,
        keys: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.total = total
        self.keys = keys
        self.clock = clock
        self.log_to = logger or logging.getLogger("metarl.progress")
        self.start_time = self.last_time = clock()
        self.start_iteration = self.last_iteration = initial

    def log(self, iteration: int, stats: Mapping[str, float]) -> None:
        now = self.clock()
        shown = [k for k in self.keys if k in stats] or list(stats)
        timing = []
        if iteration > self.last_iteration:
            per = (now - self.last_time) / (iteration - self.last_iteration)
            timing.append(f"{per:.3g} s/iteration")
        elapsed = now - self.start_time
        timing.append(f"elapsed {_duration(elapsed)}")
        done = iteration - self.start_iteration
        if done > 0 and iteration < self.total:
            timing.append(f"left ~{_duration(elapsed / done * (self.total - iteration))}")
        self.log_to.info(
            "iteration %d/%d: %s | %s",
            iteration,
            self.total,
            ", ".join(f"{k} {_short(stats[k])}" for k in shown),
            ", ".join(timing),
        )
        self.last_time, self.last_iteration = now, iteration

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    """``9.6s``, ``3m12s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _numbers(values: list[str]) -> bool:
    """Every value is a number or empty (a statistic missing from that row)."""
    try:
        for value in values:
            if value:
                float(value)
    except ValueError:
        return False
    return True


def _short(value: float) -> str:
    if not math.isfinite(value) or value == 0:
        return str(value)
    return f"{value:.4g}"
