"""Loggers, passed to the trainer (never global): CSV, TensorBoard, and a console progress bar."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from tqdm import tqdm


class Logger(Protocol):
    """Receives the statistics of an iteration."""

    def log(self, iteration: int, stats: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class CSVLogger:
    """One row per logged iteration; on resume, rows past the checkpoint are dropped first."""

    def __init__(self, path: str | Path, *, resume_at: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] | None = None
        if resume_at is not None and self.path.exists():
            self._truncate(resume_at)
        elif self.path.exists():
            self.path.unlink()

    def _truncate(self, iteration: int) -> None:
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or [])
            rows = [r for r in reader if int(r["iteration"]) <= iteration]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, iteration: int, stats: Mapping[str, float]) -> None:
        row = {"iteration": iteration, **stats}
        new_file = self.columns is None
        if self.columns is None:
            self.columns = list(row)
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"CSVLogger: new columns {sorted(extra)} after the header")
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars to a TensorBoard event directory."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

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


def _short(value: float) -> str:
    if not math.isfinite(value) or value == 0:
        return str(value)
    return f"{value:.4g}"
