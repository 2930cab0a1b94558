"""Trainer (checkpoints, exact resume, NaN stop) and the metarl command line."""

import csv
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from metarl.cli import main
from metarl.config import ConfigError, load_config
from metarl.rngs import Rngs
from metarl.supervised.sinusoid import SinusoidLearner
from metarl.trainer import (
    CHECKPOINT,
    CheckpointError,
    Trainer,
    TrainingError,
    load_checkpoint,
)

CONFIGS = Path(__file__).parent.parent / "experiments" / "configs"
SMALL = [
    "kind=sinusoid",
    "model.hidden_sizes=[8]",
    "log_every=5",
    "checkpoint_every=5",
    "meta_batch_size=4",
]


def _train(out: Path, iterations: int, resume: bool = False, extra: tuple[str, ...] = ()) -> None:
    cfg = load_config(None, [*SMALL, f"iterations={iterations}", *extra])
    Trainer(config=cfg, run_dir=out, make_learner=SinusoidLearner, progress=False).run(
        resume=resume
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_resume_after_a_stop_equals_an_unbroken_run(tmp_path: Path) -> None:
    _train(tmp_path / "straight", 20)
    _train(tmp_path / "broken", 10)
    _train(tmp_path / "broken", 20, resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert a.iteration == b.iteration == 20
    for k, v in a.learner["params"].items():
        assert torch.equal(v, b.learner["params"][k])
    assert _rows(tmp_path / "straight/progress.csv") == _rows(tmp_path / "broken/progress.csv")
    assert len(_rows(tmp_path / "straight/progress.csv")) == 4


def test_resume_truncates_log_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    _train(tmp_path / "straight", 10)
    cfg = load_config(None, [*SMALL, "iterations=10", "checkpoint_every=100", "log_every=2"])
    Trainer(config=cfg, run_dir=tmp_path / "r", make_learner=SinusoidLearner, progress=False).run()
    # simulate a crash after iteration 10's checkpoint by appending a stray row
    with (tmp_path / "r/progress.csv").open("a") as f:
        f.write("12,1.0,1.0\n")
    cfg2 = load_config(None, [*SMALL, "iterations=12", "checkpoint_every=100", "log_every=2"])
    Trainer(config=cfg2, run_dir=tmp_path / "r", make_learner=SinusoidLearner, progress=False).run(
        resume=True
    )
    iterations = [int(r["iteration"]) for r in _rows(tmp_path / "r/progress.csv")]
    assert iterations == [2, 4, 6, 8, 10, 12]


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_an_old_dir(tmp_path: Path):
    _train(tmp_path / "r", 5)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        _train(tmp_path / "r", 5)
    with pytest.raises(ConfigError, match=r"inner\.lr differ"):
        _train(tmp_path / "r", 10, resume=True, extra=("inner.lr=0.5",))


def test_resume_without_a_config_continues_the_run_with_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``metarl train --out DIR --resume`` needs neither the config file nor its --set again;
    a config given on the command line is still compared with the run's."""
    _train(tmp_path / "straight", 20)
    _train(tmp_path / "broken", 10)
    assert (
        main(["train", "--out", str(tmp_path / "broken"), "--resume", "--set", "iterations=20"])
        == 0
    )
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert b.iteration == 20 and b.config == a.config
    for k, v in a.learner["params"].items():
        assert torch.equal(v, b.learner["params"][k])
    assert _rows(tmp_path / "straight/progress.csv") == _rows(tmp_path / "broken/progress.csv")
    sinusoid = str(CONFIGS / "sinusoid.yaml")
    assert main(["train", sinusoid, "--out", str(tmp_path / "broken"), "--resume"]) == 2
    assert "with a different config: meta_batch_size, model.hidden_sizes differ" in (
        capsys.readouterr().err
    )
    # the run's config is the default only where the run is: not in a directory without one
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "run directory" in capsys.readouterr().err


def test_resume_with_a_lower_meta_lr_keeps_adams_moments_and_takes_the_new_rate(
    tmp_path: Path,
) -> None:
    _train(tmp_path / "r", 5)
    before = torch.load(tmp_path / "r/checkpoint.pt", weights_only=False)["learner"]["optimizer"]
    cfg = load_config(None, [*SMALL, "iterations=5", "meta_lr=1e-4"])
    rngs = Rngs.from_seed(cfg.seed)
    learner = SinusoidLearner(cfg, rngs)
    ckpt = load_checkpoint(tmp_path / "r")
    learner.load_state_dict(ckpt.learner)
    assert all(g["lr"] == 1e-4 for g in learner.optimizer.param_groups)
    state = learner.optimizer.state_dict()["state"]
    assert all(torch.equal(state[k]["exp_avg"], before["state"][k]["exp_avg"]) for k in state)
    _train(tmp_path / "r", 10, resume=True, extra=("meta_lr=1e-4",))  # the trainer allows it
    assert [int(r["iteration"]) for r in _rows(tmp_path / "r/progress.csv")] == [5, 10]


class _NaNAfter:
    """A learner whose statistics turn NaN at its eighth step."""

    def __init__(self, config: Any, rngs: Rngs) -> None:
        self.inner = SinusoidLearner(config, rngs)
        self.calls = 0

    def step(self, rngs: Rngs) -> dict[str, float]:
        self.calls += 1
        stats = self.inner.step(rngs)
        return {k: float("nan") if self.calls == 8 else v for k, v in stats.items()}

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        pass


def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    cfg = load_config(None, [*SMALL, "iterations=20"])
    trainer = Trainer(config=cfg, run_dir=tmp_path, make_learner=_NaNAfter, progress=False)
    with pytest.raises(TrainingError, match=r"iteration 8: non-finite .*checkpoint.*iteration 5"):
        trainer.run()
    assert load_checkpoint(tmp_path).iteration == 5


def test_missing_and_corrupt_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a metarl checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"something": 1}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="not a metarl checkpoint"):
        load_checkpoint(tmp_path)


def test_cli_train_evaluate_plot(tmp_path: Path) -> None:
    sets = [a for s in SMALL for a in ("--set", s)] + ["--set", "iterations=10", "--no-progress"]
    assert main(["train", "--out", str(tmp_path / "maml"), *sets]) == 0
    assert (
        main(
            [
                "train",
                str(CONFIGS / "sinusoid_pretrained.yaml"),
                "--out",
                str(tmp_path / "pre"),
                *sets,
            ]
        )
        == 0
    )
    assert (tmp_path / "maml/tb").is_dir() and (tmp_path / "maml/config.yaml").is_file()
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "maml"),
                "--compare",
                str(tmp_path / "pre"),
                "--num-tasks",
                "10",
                "--steps",
                "3",
            ]
        )
        == 0
    )
    rows = _rows(tmp_path / "maml/adaptation.csv")
    assert list(rows[0]) == ["method", "shots", "step", "mean_loss", "ci95_loss", "num_tasks"]
    assert len(rows) == 2 * 3 * 4 and {r["method"] for r in rows} == {"maml", "pretrained"}
    assert all(float(r["mean_loss"]) > 0 and float(r["ci95_loss"]) > 0 for r in rows)
    assert all(r["num_tasks"] == "10" for r in rows)
    with Image.open(tmp_path / "maml/adaptation.png") as img:
        assert img.size == (1350, 360) and img.getextrema() != ((255, 255), (255, 255))
    assert (
        main(
            [
                "plot",
                str(tmp_path / "maml"),
                str(tmp_path / "pre"),
                "--out",
                str(tmp_path / "curves.png"),
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "curves.png") as img:
        assert img.size == (700, 380)


def test_cli_reports_bad_input_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--out", str(tmp_path), "--set", "inner.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "metarl train: error: config key 'inner.lr': value -1" in err
    assert "Traceback" not in err
    assert main(["evaluate", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds no progress.csv" in capsys.readouterr().err


def test_progress_lines_say_iteration_headline_stats_and_timing() -> None:
    import logging

    from metarl.loggers import ProgressLines

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.progress")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    times = iter([100.0, 150.0, 250.0, 4000.0])
    lines = ProgressLines(
        total=30, initial=10, keys=("b", "a"), clock=lambda: next(times), logger=logger
    )
    lines.log(15, {"a": 1.23456, "b": -40.0, "c": 3.0})  # 10 s/it since the start at 10
    lines.log(20, {"a": 2.0, "b": 0.5})
    lines.log(30, {"c": 7.0})  # none of the keys: all statistics
    assert records == [
        "iteration 15/30: b -40, a 1.235 | 10 s/iteration, elapsed 50.0s, left ~2m30s",
        "iteration 20/30: b 0.5, a 2 | 20 s/iteration, elapsed 2m30s, left ~2m30s",
        "iteration 30/30: c 7 | 375 s/iteration, elapsed 1h05m",
    ]


def test_off_a_terminal_train_logs_a_plain_line_every_log_every(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="metarl")
    sets = [a for s in SMALL for a in ("--set", s)] + ["--set", "iterations=12"]

    def progress() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "metarl.progress"]
        caplog.clear()
        return lines

    assert main(["train", "--out", str(tmp_path / "a"), *sets]) == 0  # stderr is no terminal
    lines = progress()
    rows = _rows(tmp_path / "a/progress.csv")
    assert [r["iteration"] for r in rows] == ["5", "10", "12"] and len(lines) == 3
    for line, row in zip(lines, rows, strict=True):
        stats = ", ".join(
            f"{k} {float(row[k]):.4g}" for k in ("pre_adapt_query_loss", "post_adapt_query_loss")
        )
        assert line.startswith(f"iteration {row['iteration']}/12: {stats} | "), line
    assert re.fullmatch(r".* \| \S+ s/iteration, elapsed \S+s, left ~\S+s", lines[0])
    assert re.fullmatch(r".* \| \S+ s/iteration, elapsed \S+s", lines[-1])
    assert main(["train", "--out", str(tmp_path / "b"), *sets, "--no-progress"]) == 0
    assert len(progress()) == 3  # no bar, and the lines even on a terminal
    assert main(["train", "--out", str(tmp_path / "c"), *sets, "--quiet"]) == 0
    assert progress() == [] and not [r for r in caplog.records if r.levelno < logging.WARNING]
