"""Adaptation curves: statistics over held-out tasks, written as CSV and drawn as PNG.

Each path (sinusoid, RL, ...) computes a ``[steps + 1, tasks]`` array of a metric per method;
this module turns those into rows (mean and 95% confidence half-width per step), a CSV file and
a figure of mean +- 95% band against the number of gradient steps.
"""

from __future__ import annotations

import csv
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from metarl.errors import replacing

TITLE_CHARS_PER_INCH = 10
"""Characters of a 12-point title per inch of the width it spans (a longer title, e.g. an env
file's path or several runs' ids, wraps to the next line)."""


def _wrapped(title: str, inches: float) -> str:
    """``title`` broken into lines that fit ``inches`` of width: at spaces, else after a path's
    or an env id's ``/`` and ``:``, and only a piece longer than a line mid-name."""
    width = max(20, int(inches * TITLE_CHARS_PER_INCH))
    lines = [""]
    for chunk in re.split(r"(?<=[/:])(?=\S)|(?= )", title):
        if lines[-1] and len(lines[-1]) + len(chunk) > width:
            lines.append("")
            chunk = chunk.lstrip()
        pieces = textwrap.wrap(chunk, width, drop_whitespace=False) or [chunk]
        lines[-1] += pieces[0]
        lines += pieces[1:]
    return "\n".join(line.rstrip() for line in lines)


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the shaded band of an adaptation curve is, e.g. ``shaded: 95% confidence interval
    of the mean over 40 tasks``."""
    counts = sorted({int(r["num_tasks"]) for r in rows if "num_tasks" in r})
    tasks = " or ".join(str(n) for n in counts) or "the"
    return f"shaded: 95% confidence interval of the mean over {tasks} tasks"


def plot_curves(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str,
    ylabel: str,
    panel_key: str | None = None,
    title: str = "",
    xlabel: str = "gradient steps at test time",
) -> None:
    """Mean with a 95% band vs gradient steps (integer ticks), one line per method (one panel
    per ``panel_key``, ``title`` above them); a note under the figure says what the band is
    (:func:`band_note`).

    A method with a single row (step 0 only, e.g. the oracle) is drawn as a horizontal line.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    panels: list[Any] = [None]
    if panel_key is not None:
        panels = sorted({r[panel_key] for r in rows}, key=lambda v: float(v))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if panel_key is None or r[panel_key] == panel]
        for method in dict.fromkeys(r["method"] for r in sel):
            color = colors[methods.index(method) % len(colors)]
            _draw_curve(ax, [r for r in sel if r["method"] == method], metric, color)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        axis_inches = fig.get_figwidth() * ax.get_position().width
        ax.set_title(_wrapped(f"{panel} {panel_key}" if panel_key else title, axis_inches))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if panel_key and title:
        fig.suptitle(_wrapped(title, fig.get_figwidth()))
    fig.text(0.5, 0.01, band_note(rows), ha="center", va="bottom", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, path)


def _draw_curve(ax: Any, rows: Sequence[Mapping[str, Any]], metric: str, color: str) -> None:
    """One method's mean and 95% band; a single row (the oracle) as a horizontal line."""
    pts = sorted(rows, key=lambda r: int(r["step"]))
    method = pts[0]["method"]
    x = np.array([int(r["step"]) for r in pts])
    y = np.array([float(r[f"mean_{metric}"]) for r in pts])
    ci = np.array([float(r[f"ci95_{metric}"]) for r in pts])
    if len(pts) == 1:
        ax.axhline(y[0], ls="--", color=color, label=f"{method} (no adaptation)")
        ax.axhspan(y[0] - ci[0], y[0] + ci[0], alpha=0.1, color=color)
        return
    ax.plot(x, y, marker="o", ms=3, color=color, label=method)
    ax.fill_between(x, y - ci, y + ci, alpha=0.2, color=color)


# --------------------------------------------------------------------------- learning curves

UNITS: dict[str, str] = {
    "return": "average return per episode",
    "loss": "loss",
    "accuracy": "accuracy (fraction correct)",
    "kl": "KL divergence (nats)",
    "seconds": "seconds",
    "norm": "norm",
    "count": "count",
    "fraction": "fraction",
}
"""The axis label of each unit a logged column can be in (:func:`column_unit`)."""

NAMES: dict[str, str] = {
    "pre_adapt_return": "before adaptation",
    "post_adapt_return": "after adaptation",
    "pre_adapt_query_loss": "query loss before adaptation",
    "post_adapt_query_loss": "query loss after adaptation",
    "post_adapt_query_accuracy": "query accuracy after adaptation",
    "train_loss": "training loss",
    "trpo/loss_before": "TRPO: surrogate loss before the step",
    "trpo/loss_after": "TRPO: surrogate loss after the step",
    "trpo/kl_after": "TRPO: KL of the accepted step",
    "trpo/step_accepted": "TRPO: step accepted",
    "trpo/cg_products": "TRPO: conjugate-gradient products",
    "trpo/cg_residual": "TRPO: conjugate-gradient residual",
}
"""Readable names of known ``progress.csv`` columns (others: :func:`column_name`)."""


def column_name(key: str) -> str:
    """A readable name of a logged column: ``trpo/grad_norm`` -> ``TRPO: grad norm``."""
    if key in NAMES:
        return NAMES[key]
    group, _, rest = key.rpartition("/")
    words = rest.replace("_", " ")
    return f"{group.upper() if len(group) <= 4 else group}: {words}" if group else words


def column_unit(key: str) -> str:
    """The unit of a logged column, from the words of its name (one of :data:`UNITS`, or the
    column itself when none fits, which then gets an axis of its own)."""
    words = key.lower().replace("/", "_").split("_")
    rules = [
        ("return", {"return", "returns"}),
        ("accuracy", {"accuracy", "acc"}),
        ("kl", {"kl"}),
        ("loss", {"loss"}),
        ("seconds", {"s", "seconds", "sec", "time"}),
        ("norm", {"norm", "residual"}),
        ("count", {"backtracks", "products", "iters", "steps", "episodes"}),
        ("fraction", {"fraction", "accepted", "rescale", "ratio"}),
    ]
    for unit, names in rules:
        if names & set(words):
            return unit
    return key


def plot_learning_curves(
    path: str | Path,
    runs: Mapping[str, Sequence[Mapping[str, str]]],
    *,
    keys: Sequence[str],
    title: str = "",
    unit_labels: Mapping[str, str] | None = None,
) -> None:
    """Statistics vs meta-iteration from the ``progress.csv`` rows of one or more runs: one
    axis per unit (:func:`column_unit`; returns, losses, accuracy, KL, seconds, ...), stacked
    over a shared x axis, with readable names (:func:`column_name`). ``unit_labels`` refine
    the y labels of :data:`UNITS` (e.g. ``{"loss": "mean squared error"}``)."""
    plt = _pyplot()
    labels = {**UNITS, **(unit_labels or {})}
    units: dict[str, list[str]] = {}
    for key in keys:
        units.setdefault(column_unit(key), []).append(key)
    fig, axes = plt.subplots(
        len(units), 1, figsize=(7, 1.2 + 2.6 * len(units)), sharex=True, squeeze=False
    )
    for ax, (unit, unit_keys) in zip(axes[:, 0], units.items(), strict=True):
        for run, rows in runs.items():
            for key in unit_keys:
                pts = [(int(r["iteration"]), float(r[key])) for r in rows if r.get(key, "") != ""]
                if pts:
                    x, y = zip(*pts, strict=True)
                    name = column_name(key)
                    ax.plot(
                        x,
                        y,
                        marker="o" if len(pts) < 30 else "",
                        ms=3,
                        label=f"{run}: {name}" if len(runs) > 1 else name,
                    )
        ax.set_ylabel(labels.get(unit, column_name(unit)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("meta-iteration")
    axes[-1, 0].xaxis.set_major_locator(_integer_ticks())
    fig.suptitle(_wrapped(title or "learning curves", fig.get_figwidth()))
    fig.tight_layout()
    save_figure(fig, path)


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)
