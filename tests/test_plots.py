"""Figures a reader understands at a glance: titles, labelled axes with units, readable names,
one axis per unit, integer test-time steps and a note on what the band is. Each test looks at
the matplotlib figure the command saves."""

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import metarl.evaluation
from metarl.cli import main
from metarl.config import config_to_dict, load_config
from metarl.evaluation import column_name, column_unit, curve_rows, plot_curves

SINUSOID = ["kind=sinusoid", "model.hidden_sizes=[8]", "meta_batch_size=2", "log_every=2"]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The figures the commands save, kept open for inspection (and still written)."""
    saved: list[Any] = []

    def keep(fig: Any, path: Any) -> None:
        saved.append(fig)
        fig.savefig(path)

    monkeypatch.setattr(metarl.evaluation, "save_figure", keep)
    yield saved
    import matplotlib.pyplot as plt

    for fig in saved:
        plt.close(fig)


def _legend(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _fake_rl_run(run: Path, columns: list[str]) -> None:
    run.mkdir()
    config = load_config(None, ["env.id=metarl/Navigation2D-v0"])
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    with (run / "progress.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", *columns])
        for i in range(1, 6):
            writer.writerow([i, *(float(i * (j + 1)) for j in range(len(columns)))])


def test_learning_curves_have_a_title_units_readable_names_and_an_axis_per_unit(
    tmp_path: Path, figures: list[Any]
) -> None:
    columns = [
        "pre_adapt_return",
        "post_adapt_return",
        "trpo/kl_after",
        "trpo/loss_before",
        "trpo/backtracks",
        "sample_time_s",
        "trpo/tried_kl",
    ]
    _fake_rl_run(tmp_path / "maml", columns)
    assert main(["plot", str(tmp_path / "maml"), "--out", str(tmp_path / "a.png")]) == 0
    (fig,) = figures
    (ax,) = fig.axes  # by default the headline statistics: the returns
    assert fig._suptitle.get_text() == "learning curves: metarl/Navigation2D-v0, maml"
    assert ax.get_ylabel() == "average return per episode"
    assert ax.get_xlabel() == "meta-iteration"
    assert _legend(ax) == ["before adaptation", "after adaptation"]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_plot_keys_of_different_units_get_one_axis_each(tmp_path: Path, figures: list[Any]) -> None:
    columns = [
        "pre_adapt_return",
        "trpo/kl_after",
        "trpo/loss_before",
        "trpo/backtracks",
        "sample_time_s",
        "trpo/tried_kl",
        "post_adapt_return",
    ]
    _fake_rl_run(tmp_path / "maml", columns)
    keys = ",".join(columns)
    out = tmp_path / "b.png"
    assert main(["plot", str(tmp_path / "maml"), "--keys", keys, "--out", str(out)]) == 0
    (fig,) = figures
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == [
        "average return per episode",
        "KL divergence (nats)",
        "surrogate loss",
        "count",
        "seconds",
    ]
    legends = [_legend(ax) for ax in fig.axes]
    assert legends[0] == ["before adaptation", "after adaptation"]
    assert legends[1] == ["TRPO: KL of the accepted step", "TRPO: tried kl"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["", "", "", "", "meta-iteration"]
    assert out.stat().st_size > 0


def test_column_units_and_names() -> None:
    units = {
        "pre_adapt_query_loss": "loss",
        "post_adapt_query_accuracy": "accuracy",
        "trpo/grad_norm": "norm",
        "trpo/cg_residual": "norm",
        "trpo/step_fraction": "fraction",
        "trpo/cg_products": "count",
        "trpo/initial_step_size": "trpo/initial_step_size",  # unknown: an axis of its own
    }
    assert {k: column_unit(k) for k in units} == units
    assert column_name("trpo/grad_norm") == "TRPO: grad norm"
    assert column_name("learner/update_s") == "learner: update s"
    assert column_name("post_adapt_query_loss") == "query loss after adaptation"


def test_adaptation_curves_have_integer_steps_and_say_what_the_band_is(
    tmp_path: Path, figures: list[Any]
) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = curve_rows(rng.normal(size=(4, 40)), metric="return", method="maml")
    rows += curve_rows(rng.normal(size=(1, 40)), metric="return", method="oracle")
    plot_curves(
        tmp_path / "a.png",
        rows,
        metric="return",
        ylabel="average return per episode",
        title="metarl/Navigation2D-v0",
        xlabel="policy-gradient steps at test time",
    )
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_xlabel() == "policy-gradient steps at test time"
    assert ax.get_ylabel() == "average return per episode"
    assert ax.get_title() == "metarl/Navigation2D-v0"
    assert [float(t) for t in ax.get_xticks() if 0 <= t <= 3] == [0.0, 1.0, 2.0, 3.0]
    assert _legend(ax) == ["maml", "oracle (no adaptation)"]
    note = [t.get_text() for t in fig.texts]
    assert note == ["shaded: 95% confidence interval of the mean over 40 tasks"]
    lines = ax.get_lines()
    assert lines[0].get_color() != lines[1].get_color()  # the oracle has a colour of its own


def test_evaluate_labels_the_sinusoid_panels(tmp_path: Path, figures: list[Any]) -> None:
    sets = [a for s in [*SINUSOID, "iterations=4"] for a in ("--set", s)]
    assert main(["train", "--out", str(tmp_path / "r"), *sets, "--quiet"]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--num-tasks", "5", "--steps", "2"]) == 0
    (fig,) = figures
    assert fig._suptitle.get_text() == "sinusoid"
    assert [ax.get_title() for ax in fig.axes] == ["5 shots", "10 shots", "20 shots"]
    assert {ax.get_xlabel() for ax in fig.axes} == {"gradient steps at test time"}
    assert {ax.get_ylabel() for ax in fig.axes} == {"query mean squared error"}
    assert [t.get_text() for t in fig.texts if t is not fig._suptitle] == [
        "shaded: 95% confidence interval of the mean over 5 tasks"
    ]


def test_long_titles_wrap_at_spaces_and_separators_never_mid_name() -> None:
    from metarl.evaluation import _wrapped

    env_file = "results/ant_vel/paper_dt.py:paperdt/AntVel-v0"
    assert _wrapped(env_file, 6.4) == env_file  # fits: one line
    assert _wrapped(env_file, 3.2) == "results/ant_vel/paper_dt.py:\npaperdt/AntVel-v0"
    title = f"learning curves: metarl/HalfCheetahVel-v0, {env_file}, maml"
    lines = _wrapped(title, 3.2).split("\n")
    assert "".join(lines).replace(" ", "") == title.replace(" ", "")  # nothing lost
    assert all(len(line) <= 32 for line in lines) and len(lines) > 2
    for line in lines[:-1]:  # every break is at a space (dropped) or after / or :
        assert line[-1] in "/:" or title[title.index(line) + len(line)] == " "
    assert _wrapped("x" * 50, 3.2) == "x" * 32 + "\n" + "x" * 18  # a name too long for any line
