"""checkpoint_keep: the last k checkpoints and the best one by the kind's headline statistic,
kept through resumes; ``metarl evaluate --checkpoint best|last|N --out DIR``."""

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from metarl.cli import main
from metarl.config import load_config
from metarl.errors import StepError
from metarl.rngs import Rngs
from metarl.trainer import (
    BEST_CHECKPOINT,
    CHECKPOINT,
    BestBy,
    CheckpointError,
    Trainer,
    TrainingError,
    load_checkpoint,
)

# A score per iteration 1..12; with checkpoints every 3 iterations the interval means are
# 2 (1-3), 6 (4-6), 4 (7-9), 5 (10-12): the best (highest) is the checkpoint of iteration 6.
SCORES = [1.0, 2.0, 3.0, 9.0, 5.0, 4.0, 4.0, 4.0, 4.0, 5.0, 5.0, 5.0]


class Scripted:
    """A learner whose statistics are :data:`SCORES`, in order, whatever the process: its
    step count is its state, so a resumed run goes on where the checkpoint was."""

    fail_at: int | None = None

    def __init__(self, config: Any, rngs: Rngs) -> None:
        self.n = 0

    def step(self, rngs: Rngs) -> dict[str, float]:
        self.n += 1
        if self.n == self.fail_at:
            raise StepError("a worker died")
        return {"score": SCORES[self.n - 1], "other": -SCORES[self.n - 1]}

    def state_dict(self) -> dict[str, Any]:
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = int(state["n"])

    def close(self) -> None:
        pass


def _config(iterations: int, keep: int) -> Any:
    return load_config(
        None,
        [
            "kind=sinusoid",
            f"iterations={iterations}",
            "checkpoint_every=3",
            "log_every=2",
            f"checkpoint_keep={keep}",
        ],
    )


def _run(out: Path, iterations: int, keep: int, *, resume: bool = False, **kw: Any) -> None:
    Trainer(
        config=_config(iterations, keep),
        run_dir=out,
        make_learner=kw.pop("learner", Scripted),
        progress=False,
        best_by=kw.pop("best_by", BestBy("score", higher_is_better=True)),
    ).run(resume=resume)


def _files(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint*"))


def test_checkpoint_keep_keeps_the_last_k_and_the_best_by_interval_means(tmp_path: Path) -> None:
    _run(tmp_path / "a", 12, keep=2)
    assert _files(tmp_path / "a") == [
        "checkpoint.pt",
        "checkpoint_12.pt",
        "checkpoint_9.pt",
        BEST_CHECKPOINT,
    ]
    best = load_checkpoint(tmp_path / "a", "best")
    assert best.iteration == 6 and best.path == tmp_path / "a" / BEST_CHECKPOINT
    assert best.best == {"key": "score", "value": 6.0, "iteration": 6}
    assert int(best.learner["n"]) == 6  # the weights of iteration 6, not the last ones
    assert load_checkpoint(tmp_path / "a", "9").iteration == 9
    assert load_checkpoint(tmp_path / "a").best == best.best  # the record goes on
    # lower is better: the interval of 1..3 (mean 2) wins
    _run(tmp_path / "b", 12, keep=1, best_by=BestBy("score", higher_is_better=False))
    assert load_checkpoint(tmp_path / "b", "best").iteration == 3
    assert _files(tmp_path / "b") == ["checkpoint.pt", "checkpoint_12.pt", BEST_CHECKPOINT]


def test_the_default_keeps_only_checkpoint_pt(tmp_path: Path) -> None:
    _run(tmp_path, 12, keep=0)
    assert _files(tmp_path) == [CHECKPOINT]
    with pytest.raises(CheckpointError, match=r"holds no best checkpoint .* checkpoint_keep=K"):
        load_checkpoint(tmp_path, "best")
    assert load_checkpoint(tmp_path, "12").iteration == 12  # checkpoint.pt is of iteration 12
    with pytest.raises(CheckpointError, match="holds no checkpoint of iteration 9"):
        load_checkpoint(tmp_path, "9")
    with pytest.raises(CheckpointError, match="expected best, last or an iteration number"):
        load_checkpoint(tmp_path, "newest")


def test_a_resumed_run_keeps_the_checkpoints_an_unbroken_one_does(tmp_path: Path) -> None:
    _run(tmp_path / "straight", 12, keep=2)
    failing = type("Failing", (Scripted,), {"fail_at": 8})
    with pytest.raises(TrainingError, match="iteration 8"):
        _run(tmp_path / "broken", 12, keep=2, learner=failing)
    assert _files(tmp_path / "broken") == [
        "checkpoint.pt",
        "checkpoint_3.pt",
        "checkpoint_6.pt",
        BEST_CHECKPOINT,
    ]
    _run(tmp_path / "broken", 12, keep=2, resume=True)
    assert _files(tmp_path / "broken") == _files(tmp_path / "straight")
    for which in ("best", "last", "9", "12"):
        a, b = (
            load_checkpoint(tmp_path / "straight", which),
            load_checkpoint(tmp_path / "broken", which),
        )
        assert (a.iteration, a.best, int(a.learner["n"])) == (
            b.iteration,
            b.best,
            int(b.learner["n"]),
        )


def test_a_stop_between_the_writes_is_repaired_on_resume(tmp_path: Path) -> None:
    _run(tmp_path, 6, keep=2)
    (tmp_path / BEST_CHECKPOINT).unlink()  # as if stopped after checkpoint.pt of iteration 6
    (tmp_path / "checkpoint_6.pt").unlink()
    _run(tmp_path, 9, keep=2, resume=True)
    assert load_checkpoint(tmp_path, "best").iteration == 6
    assert _files(tmp_path) == [
        "checkpoint.pt",
        "checkpoint_6.pt",
        "checkpoint_9.pt",
        BEST_CHECKPOINT,
    ]
    _run(tmp_path, 12, keep=1, resume=True)  # checkpoint_keep may change on resume
    assert _files(tmp_path) == ["checkpoint.pt", "checkpoint_12.pt", BEST_CHECKPOINT]


SINUSOID = [
    "--set",
    "kind=sinusoid",
    "--set",
    "model.hidden_sizes=[8]",
    "--set",
    "meta_batch_size=2",
    "--set",
    "iterations=8",
    "--set",
    "checkpoint_every=2",
    "--set",
    "checkpoint_keep=2",
    "--quiet",
]


def test_evaluate_a_chosen_checkpoint_into_another_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metarl")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *SINUSOID]) == 0
    assert _files(run) == ["checkpoint.pt", "checkpoint_6.pt", "checkpoint_8.pt", BEST_CHECKPOINT]
    best = load_checkpoint(run, "best")
    evaluate = ["evaluate", str(run), "--num-tasks", "4", "--steps", "1"]
    out = tmp_path / "new" / "evals"
    assert main([*evaluate, "--checkpoint", "best", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["adaptation_best.csv", "adaptation_best.png"]
    assert f"evaluating {run / BEST_CHECKPOINT} (iteration {best.iteration})" in caplog.text
    assert main([*evaluate, "--checkpoint", "6", "--out", str(out)]) == 0
    assert main([*evaluate, "--checkpoint", "best", "--out", str(out)]) == 0
    assert caplog.messages[-1] == (
        f"wrote {out}/adaptation_best.csv and {out}/adaptation_best.png "
        "(replacing the previous evaluation's)"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adaptation_6.csv",
        "adaptation_6.png",
        "adaptation_best.csv",
        "adaptation_best.png",
    ]
    assert not (run / "adaptation.csv").exists()
    assert main(evaluate) == 0  # by default: the last checkpoint, into the run directory
    assert (run / "adaptation.csv").is_file()
    capsys.readouterr()
    for args, message in [
        (
            ["--checkpoint", "5"],
            "holds no checkpoint of iteration 5; it holds last, best, and the iterations 6, 8",
        ),
        (["--checkpoint", "newest"], "expected best, last or an iteration number"),
        (["--out", str(run / "checkpoint.pt")], "is a file"),
        (["--out", str(tmp_path / "gone"), "--episodes", "3"], "--episodes does not apply"),
    ]:
        assert main([*evaluate, *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "gone").exists()  # a failed evaluation leaves no new directory
