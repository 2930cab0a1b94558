"""Adaptation curves: statistics over held-out tasks, written as CSV and drawn as PNG.

Each path (sinusoid, RL, ...) computes a ``[steps + 1, tasks]`` array of a metric per method;
this module turns those into rows (mean and 95% confidence half-width per step), a CSV file and
a figure of mean +- 95% band against the number of gradient steps.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from metarl.errors import replacing


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t) over axis 0."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"mean_ci95 needs at least 2 values, got {n}")
    sem = values.std(ddof=1) / np.sqrt(n)
    return float(values.mean()), float(sps.t.ppf(0.975, n - 1) * sem)


def curve_rows(
    per_step: np.ndarray, *, metric: str, method: str, extra: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows ``method, [extra...], step, mean_<metric>, ci95_<metric>, num_tasks``."""
    rows = []
    for step, values in enumerate(np.asarray(per_step)):
        mean, ci = mean_ci95(values)
        rows.append(
            {
                "method": method,
                **(extra or {}),
                "step": step,
                f"mean_{metric}": mean,
                f"ci95_{metric}": ci,
                "num_tasks": len(values),
            }
        )
    return rows


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows (all with the same keys) as CSV, atomically."""
    if not rows:
        raise ValueError("write_rows: no rows to write")
    with replacing(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_rows` (values as strings)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def figure_format(path: str | Path) -> str:
    """The image format a figure path names (``.png``, ``.pdf``, ``.svg``, ...), or a
    ``ValueError`` saying which ones are possible."""
    from matplotlib.figure import Figure

    suffix = Path(path).suffix.lower().lstrip(".")
    formats = Figure().canvas.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"{str(path)!r}: cannot tell the image format from {Path(path).suffix or 'no suffix'!r}"
            f"; use one of {', '.join('.' + f for f in sorted(formats))}"
        )
    return suffix


def save_figure(fig: Any, path: str | Path) -> None:
    """Save ``fig`` at ``path`` atomically (the format from the suffix), then close it."""
    import matplotlib.pyplot as plt

    fmt = figure_format(path)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format=fmt)
    finally:
        plt.close(fig)


def plot_curves(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    ylabel: str,
    panel_key: str | None = None,
    title: str = "",
) -> None:
    """Mean with a 95% band vs gradient steps, one line per method (one panel per ``panel_key``).

    A method with a single row (step 0 only, e.g. the oracle) is drawn as a horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[Any] = [None]
    if panel_key is not None:
        panels = sorted({r[panel_key] for r in rows}, key=lambda v: float(v))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if panel_key is None or r[panel_key] == panel]
        for method in dict.fromkeys(r["method"] for r in sel):
            pts = sorted((r for r in sel if r["method"] == method), key=lambda r: int(r["step"]))
            x = np.array([int(r["step"]) for r in pts])
            y = np.array([float(r[f"mean_{metric}"]) for r in pts])
            ci = np.array([float(r[f"ci95_{metric}"]) for r in pts])
            if len(pts) == 1:
                line = ax.axhline(y[0], ls="--", label=method)
                ax.axhspan(y[0] - ci[0], y[0] + ci[0], alpha=0.15, color=line.get_color())
                continue
            ax.plot(x, y, marker="o", ms=3, label=method)
            ax.fill_between(x, y - ci, y + ci, alpha=0.25)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} {panel_key}={panel}".strip() if panel_key else title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_learning_curves(
    path: str | Path, runs: Mapping[str, Sequence[Mapping[str, str]]], *, keys: Sequence[str]
) -> None:
    """Statistics vs iteration from the ``progress.csv`` rows of one or more runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, rows in runs.items():
        for key in keys:
            pts = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key, "") != ""]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, label=f"{run}: {key}" if len(runs) > 1 else key)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
