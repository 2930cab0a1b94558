"""Every failure a user can cause ends in one clear line, and nothing a user made is lost.

Real command-line runs (``metarl.cli.main`` in this process, or the ``metarl`` console script
in a subprocess for signals), on tiny configs: stop signals, bad input, a full disk, damaged
run files. Errors exit 2 with one line on stderr; SIGINT/SIGTERM exit 130/143.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl.experiments
from metarl.cli import main
from metarl.rngs import Rngs
from metarl.supervised.sinusoid import SinusoidLearner
from metarl.trainer import CHECKPOINT, load_checkpoint

METARL = str(Path(sys.executable).parent / "metarl")
SINUSOID = [
    "--set",
    "kind=sinusoid",
    "--set",
    "model.hidden_sizes=[8]",
    "--set",
    "meta_batch_size=2",
    "--no-progress",
]
RL = [
    "--set",
    "kind=rl",
    "--set",
    "meta_batch_size=2",
    "--set",
    "episodes_per_task=2",
    "--set",
    "env.horizon=5",
    "--set",
    "policy.hidden_sizes=[8]",
    "--no-progress",
]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _sets(**values: object) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _train(out: Path, *args: str, **values: object) -> int:
    return main(["train", "--out", str(out), *SINUSOID, *_sets(**values), *args])


def _one_line(capsys: pytest.CaptureFixture[str], start: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(start), err
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path, *, drop_prefix: str = "time/") -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return [
            {k: v for k, v in row.items() if not k.startswith(drop_prefix)}
            for row in csv.DictReader(f)
        ]


# --------------------------------------------------------------------------- (2) signals


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job ignores SIGINT


def _start(args: list[str], *, new_session: bool = False) -> subprocess.Popen[str]:
    """``metarl train ARGS --quiet`` (no progress lines: stderr holds what the stop says)."""
    return subprocess.Popen(
        [METARL, *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_child_setup,
        start_new_session=new_session,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for_rows(proc: subprocess.Popen[str], path: Path, rows: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"metarl ended early: {proc.communicate()}")
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("metarl wrote no progress in 90 s")


def _stopped(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"metarl did not stop: {proc.communicate()}")
    return proc.returncode, err


STOPPED = re.compile(
    r"metarl train: interrupted at iteration (\d+); the last checkpoint \(iteration (\d+)\) "
    r"is kept in (.+); continue with --resume"
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_ends_training_in_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, signum: int
) -> None:
    out = tmp_path / "run"
    sizes = {"log_every": 1, "checkpoint_every": 4}
    proc = _start(
        ["train", "--out", str(out), *SINUSOID, *_sets(iterations=10**6, **sizes)],
    )
    _wait_for_rows(proc, out / "progress.csv", 6)
    proc.send_signal(signum)
    code, err = _stopped(proc)
    assert code == 128 + signum, err
    assert len(err.splitlines()) == 1, err
    match = STOPPED.fullmatch(err.strip())
    assert match is not None, err
    at, kept = int(match[1]), int(match[2])
    assert match[3] == str(out) and kept < at and kept % 4 == 0
    assert load_checkpoint(out).iteration == kept  # intact: the last one written
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "progress.csv",
        "tb",
    ]
    assert _train(out, "--resume", iterations=kept + 2, **sizes) == 0
    assert [int(r["iteration"]) for r in _rows(out / "progress.csv")] == list(range(1, kept + 3))


def test_ctrl_c_stops_rl_training_with_sampler_workers_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    workers = _sets(**{"sampler.backend": "processes", "sampler.num_workers": 2})
    proc = _start(
        ["train", "--out", str(out), *RL, *workers, *_sets(iterations=10**6)], new_session=True
    )
    _wait_for_rows(proc, out / "progress.csv", 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    code, err = _stopped(proc)
    assert code == 130, err
    assert len(err.splitlines()) == 1 and STOPPED.fullmatch(err.strip()), err
    kept = int(STOPPED.fullmatch(err.strip())[2])  # type: ignore[index]
    assert load_checkpoint(out).iteration == kept
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers were closed with their parent
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("sampler workers outlived the run")


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT as in a terminal (this suite may run as a background job, which ignores it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _SignalAt:
    """A sinusoid learner that sends its own process ``signum`` during step ``at``."""

    closed = False

    def __init__(self, config: Any, rngs: Rngs, *, signum: int, at: int) -> None:
        self.inner = SinusoidLearner(config, rngs)
        self.signum, self.at, self.calls = signum, at, 0

    def step(self, rngs: Rngs) -> dict[str, float]:
        self.calls += 1
        stats = self.inner.step(rngs)
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
            time.sleep(5)  # the handler interrupts this
        return stats

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        type(self).closed = True


def _signal_at(monkeypatch: pytest.MonkeyPatch, signum: int, at: int) -> type[_SignalAt]:
    learner = type("Learner", (_SignalAt,), {"closed": False})

    def make(config: Any, rngs: Rngs) -> _SignalAt:
        return learner(config, rngs, signum=signum, at=at)

    kind = dataclasses.replace(metarl.experiments.KINDS["sinusoid"], make_learner=make)
    monkeypatch.setitem(metarl.experiments.KINDS, "sinusoid", kind)
    return learner


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_closes_its_learner_and_writes_nothing_new(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
) -> None:
    learner = _signal_at(monkeypatch, signum, at=7)
    code = _train(tmp_path, iterations=20, log_every=1, checkpoint_every=5)
    assert code == 128 + signum
    line = _one_line(capsys, "metarl train: interrupted at iteration 7;")
    assert f"the last checkpoint (iteration 5) is kept in {tmp_path}" in line
    assert learner.closed
    assert load_checkpoint(tmp_path).iteration == 5
    assert [r["iteration"] for r in _rows(tmp_path / "progress.csv")] == list("123456")


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_evaluation_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
) -> None:
    assert _train(tmp_path, iterations=2) == 0

    def evaluate(*args: Any) -> Any:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler interrupts this

    kind = dataclasses.replace(metarl.experiments.KINDS["sinusoid"], evaluate=evaluate)
    monkeypatch.setitem(metarl.experiments.KINDS, "sinusoid", kind)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path)]) == 128 + signum
    assert _one_line(capsys, "metarl evaluate: interrupted; nothing was written")
    assert not (tmp_path / "adaptation.csv").exists()


# --------------------------------------------------------------------------- (3) bad input


class _UnreproducibleEnv(gym.Env[np.ndarray, np.ndarray]):
    """A task env whose sample_tasks ignores its rng."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    calls = 0

    def __init__(self) -> None:
        self._task = 0.0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[float]:
        type(self).calls += 1
        return [float(type(self).calls + i) for i in range(num_tasks)]

    def set_task(self, task: float) -> None:
        self._task = task

    @property
    def task(self) -> float:
        return self._task

    @task.setter
    def task(self, task: float) -> None:
        self.set_task(task)


gym.register("metarl_failures/Unreproducible-v0", entry_point=_UnreproducibleEnv)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "inner.lr=[1"], "override 'inner.lr=[1': the value '[1' is not valid YAML"),
        (
            [*RL, "--set", "env.id=CartPole-v1"],
            "config key 'env.id': 'CartPole-v1' is not a task env: CartPoleEnv has no "
            "sample_tasks(num_tasks, rng) method",
        ),
        (
            [*RL, "--set", "env.id=metarl_failures/Unreproducible-v0"],
            "config key 'env.id': 'metarl_failures/Unreproducible-v0' is not a task env: "
            "_UnreproducibleEnv.sample_tasks is not reproducible",
        ),
        (
            [*RL, *_sets(**{"sampler.backend": "processes", "sampler.num_workers": 5})],
            "config key 'sampler.num_workers': 5 worker processes for 4 sub-envs "
            "(meta_batch_size x episodes_per_task = 2 x 2)",
        ),
        (
            [*RL, *_sets(**{"sampler.backend": "ray", "sampler.num_workers": 3})],
            "config key 'sampler.num_workers': 3 Ray workers for 2 tasks (meta_batch_size)",
        ),
        (
            [*RL, "--set", "env.kwargs.frmae_skip=2"],
            "config key 'env.kwargs': making 'metarl/Navigation2D-v0' with {'frmae_skip': 2} "
            "raised TypeError: ",
        ),
        (
            [*RL, "--set", "env.kwargs.max_episode_steps=5"],
            "config key 'env.kwargs': env kwargs: 'max_episode_steps' cannot be set here: the "
            "episode length is env.horizon",
        ),
    ],
    ids=["yaml", "no-sample-tasks", "unreproducible", "processes", "ray", "kwarg", "reserved"],
)
def test_a_bad_config_is_one_line_and_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "new" / "run"
    assert main(["train", "--out", str(out), *args]) == 2
    assert message in _one_line(capsys, "metarl train: error: ")
    assert not (tmp_path / "new").exists()


def test_out_that_cannot_be_a_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file"
    file.write_text("mine")
    assert _train(file, iterations=1) == 2
    assert f"--out '{file}' is a file, not a directory" in _one_line(capsys, "metarl train: ")
    assert _train(file / "sub" / "run", iterations=1) == 2
    line = _one_line(capsys, "metarl train: error: ")
    assert f"cannot create run directory '{file}/sub/run': '{file}' is a file" in line
    assert file.read_text() == "mine"


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` (a directory) unwritable for this process: mode 555, or for root, who writes
    there all the same, the immutable attribute (skipped where ``chattr`` cannot set it)."""
    if not IS_ROOT:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("root writes into read-only directories and chattr is missing")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"root writes into read-only directories; chattr +i: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_out_in_a_read_only_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        assert _train(tmp_path / "ro" / "run", iterations=1) == 2
    assert "cannot create run directory" in _one_line(capsys, "metarl train: error: ")


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished three-iteration sinusoid run."""
    assert _train(tmp_path / "run", iterations=3, log_every=1) == 0
    return tmp_path / "run"


def test_plot_out_that_cannot_be_written(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("mine")
    cases = {
        tmp_path / "missing" / "x.png": "directory '{}' does not exist",
        tmp_path / "file" / "x.png": "directory '{}' is a file",
        tmp_path / "x.txt": "cannot tell the image format from '.txt'; use one of",
        run: "is a directory",
    }
    capsys.readouterr()
    for out, message in cases.items():
        assert main(["plot", str(run), "--out", str(out)]) == 2
        assert message.format(out.parent) in _one_line(capsys, "metarl plot: error: --out ")
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.pdf")]) == 0
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")


def test_plot_and_evaluate_into_a_read_only_directory(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        assert main(["plot", str(run), "--out", str(tmp_path / "ro" / "x.png")]) == 2
    assert "is not writable" in _one_line(capsys, "metarl plot: error: ")
    with read_only(run):
        assert main(["evaluate", str(run)]) == 2
    assert "is not writable" in _one_line(capsys, "metarl evaluate: error: ")


def test_evaluate_checks_its_outputs_before_it_evaluates(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (run / "adaptation.png").mkdir()
    evaluated = []
    kind = dataclasses.replace(
        metarl.experiments.KINDS["sinusoid"], evaluate=lambda *a: evaluated.append(a)
    )
    monkeypatch.setitem(metarl.experiments.KINDS, "sinusoid", kind)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    line = _one_line(capsys, "metarl evaluate: error: ")
    assert f"output '{run}/adaptation.png' is a directory" in line
    assert evaluated == []


def test_evaluate_with_more_worker_processes_than_sub_envs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workers = _sets(**{"sampler.backend": "processes", "sampler.num_workers": 3})
    assert main(["train", "--out", str(tmp_path), *RL, *workers, *_sets(iterations=1)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path), "--num-tasks", "2", "--episodes", "1"]) == 2
    line = _one_line(capsys, "metarl evaluate: error: config key 'sampler.num_workers': ")
    assert "3 worker processes for 2 sub-envs (eval.num_tasks x eval.episodes_per_task" in line
    assert not (tmp_path / "adaptation.csv").exists()


# --------------------------------------------------------------------------- (4) full disk

TORCH_WRITE_FAILED = (
    "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
    "data/0: file write failed"
)


def _full_disk_at(monkeypatch: pytest.MonkeyPatch, iteration: int, error: Exception) -> None:
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if obj["iteration"] == iteration:
            Path(f).write_bytes(b"PK\x03\x04 the first bytes")
            raise error
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


FULL = [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(TORCH_WRITE_FAILED)]


@pytest.mark.parametrize("error", FULL, ids=["ENOSPC", "torch"])
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
) -> None:
    _full_disk_at(monkeypatch, 6, error)
    assert _train(tmp_path, iterations=10, checkpoint_every=3, log_every=1) == 2
    line = _one_line(capsys, "metarl train: error: iteration 6: ")
    assert f"no space left on {tmp_path}" in line
    assert f"The last good checkpoint is kept: {tmp_path / CHECKPOINT} (iteration 3)" in line
    assert "inline_container" not in line
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    assert load_checkpoint(tmp_path).iteration == 3


@pytest.mark.parametrize("error", FULL, ids=["ENOSPC", "torch"])
def test_a_full_disk_before_the_first_checkpoint_leaves_the_directory_as_it_was(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
) -> None:
    _full_disk_at(monkeypatch, 0, error)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        assert _train(out, iterations=3) == 2
        assert f"no space left on {out}" in _one_line(capsys, "metarl train: error: ")
    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "empty").iterdir()) == []


# --------------------------------------------------------------------------- (6) used out


def test_a_new_run_refuses_a_directory_that_is_not_empty(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run / CHECKPOINT).unlink()  # a run stopped before its first checkpoint, or any files
    before = {p.name: _digest(p) for p in run.iterdir() if p.is_file()}
    tb_files = sorted((run / "tb").iterdir())
    assert _train(run, iterations=1) == 2
    line = _one_line(capsys, "metarl train: error: ")
    assert f"'{run}' is not empty (it holds config.yaml, progress.csv, tb)" in line
    assert {p.name: _digest(p) for p in run.iterdir() if p.is_file()} == before
    assert sorted((run / "tb").iterdir()) == tb_files
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert _train(notes, iterations=1) == 2
    assert "is not empty (it holds todo.txt)" in _one_line(capsys, "metarl train: error: ")
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path / "empty", iterations=1) == 0


# --------------------------------------------------------------------------- (7) resume


def test_resume_that_would_train_nothing_is_refused_and_counts_are_honest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="metarl")
    assert _train(tmp_path, iterations=12) == 0
    assert "trained 12 iterations (now at 12 of 12)" in caplog.text
    config = _digest(tmp_path / "config.yaml")
    for iterations in (5, 12):
        assert _train(tmp_path, "--resume", iterations=iterations) == 2
        line = _one_line(capsys, "metarl train: error: config key 'iterations': ")
        assert (
            f"run '{tmp_path}' is at iteration 12; iterations={iterations} would train "
            "nothing; set iterations > 12"
        ) in line
    assert _digest(tmp_path / "config.yaml") == config
    caplog.clear()
    assert _train(tmp_path, "--resume", iterations=13) == 0
    assert "trained 1 iteration (now at 13 of 13)" in caplog.text
    caplog.clear()
    assert _train(tmp_path, "--resume", iterations=15) == 0
    assert "trained 2 iterations (now at 15 of 15)" in caplog.text
    assert "iterations: 15" in (tmp_path / "config.yaml").read_text()


# --------------------------------------------------------------------------- (8) resume logs


def _scalars(run: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)]


@pytest.mark.usefixtures("sigint_raises")
def test_a_resumed_run_logs_the_rows_and_tensorboard_steps_of_an_unbroken_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"log_every": 4, "checkpoint_every": 3}
    assert _train(tmp_path / "straight", iterations=14, **sizes) == 0
    # a signal at iteration 11: the last checkpoint is 9, off the log grid (8, 12)
    with monkeypatch.context() as patch:
        _signal_at(patch, signal.SIGTERM, at=11)
        assert _train(tmp_path / "broken", iterations=14, **sizes) == 143
    assert load_checkpoint(tmp_path / "broken").iteration == 9
    # and a run that ended off the grid (an end-of-run row at 10), extended
    assert _train(tmp_path / "extended", iterations=10, **sizes) == 0
    for run in ("broken", "extended"):
        assert _train(tmp_path / run, "--resume", iterations=14, **sizes) == 0
    expected = _rows(tmp_path / "straight" / "progress.csv")
    assert [r["iteration"] for r in expected] == ["4", "8", "12", "14"]
    key = "post_adapt_query_loss"
    for run in ("broken", "extended"):
        assert _rows(tmp_path / run / "progress.csv") == expected, run
        assert _scalars(tmp_path / run, key) == _scalars(tmp_path / "straight", key), run


# --------------------------------------------------------------------------- (9) progress.csv


def test_a_damaged_log_stops_a_resume_in_one_line_and_is_kept(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress = run / "progress.csv"
    with progress.open("a") as f:
        f.write("3,abc\x00\x01garbage\n")
    before = _digest(progress)
    config = _digest(run / "config.yaml")
    assert _train(run, "--resume", iterations=6, log_every=1) == 2
    line = _one_line(capsys, f"metarl train: error: {progress} is damaged (line 5: ")
    assert "it was left as it is" in line
    assert _digest(progress) == before
    assert _digest(run / "config.yaml") == config
    assert main(["plot", str(run), "--out", str(run / "x.png")]) == 2
    assert f"{progress} is damaged" in _one_line(capsys, "metarl plot: error: ")


def test_a_row_cut_short_by_a_crash_is_dropped_on_resume(run: Path) -> None:
    with (run / "progress.csv").open("a") as f:
        f.write("4,0.12")  # a write cut short: past the checkpoint, no newline
    assert _train(run, "--resume", iterations=5, log_every=1) == 0
    assert [r["iteration"] for r in _rows(run / "progress.csv")] == list("12345")


def test_rewriting_the_log_on_resume_is_atomic(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import metarl.loggers

    progress = run / "progress.csv"
    before = _digest(progress)

    class FullDiskWriter:
        def __init__(self, f: Any) -> None:
            self.f = f

        def writerow(self, row: Any) -> None:
            self.f.write(",".join(row) + "\n")

        def writerows(self, rows: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metarl.loggers.csv, "writer", FullDiskWriter)
    assert _train(run, "--resume", iterations=5, log_every=1) == 2
    assert f"no space left on {run}" in _one_line(capsys, "metarl train: error: ")
    assert _digest(progress) == before
    assert not (run / "progress.csv.tmp").exists()


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    import csv

    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize(
    ("method", "times"),
    [
        (["method=oracle"], ["time/sample_s", "time/trpo_s"]),
        (["method=pretrained", "optimizer=adam"], ["time/sample_s", "time/adam_s"]),
        (["method=random"], ["time/sample_s"]),
    ],
)
def test_baseline_runs_log_their_times_and_widen_an_older_log_on_resume(
    tmp_path: Path, method: list[str], times: list[str]
) -> None:
    """Plain TRPO, Adam and random runs log the seconds of their parts, as MAML runs do. A run
    whose progress.csv predates those columns resumes: its rows are kept as they were, empty in
    the new columns, which the new rows fill; plot reads the file."""
    run = tmp_path / "run"
    sets = _sets(iterations=2, checkpoint_every=1) + [a for m in method for a in ("--set", m)]
    assert main(["train", "--out", str(run), *RL, *sets]) == 0
    header, rows = _csv(run / "progress.csv")
    assert header[-len(times) :] == times
    assert all(float(row[t]) > 0 for row in rows for t in times)
    old = [key for key in header if not key.startswith("time/")]
    with (run / "progress.csv").open("w") as f:  # the file as a version without times wrote it
        f.write(",".join(old) + "\n")
        f.writelines(",".join(row[k] for k in old) + "\n" for row in rows)
    before = [{k: row[k] for k in old} for row in rows]
    assert (
        main(["train", "--out", str(run), "--resume", "--set", "iterations=4", "--no-progress"])
        == 0
    )
    header, rows = _csv(run / "progress.csv")
    assert header == old + times
    assert [row["iteration"] for row in rows] == list("1234")
    assert [{k: row[k] for k in old} for row in rows[:2]] == before
    assert all(row[t] == "" for row in rows[:2] for t in times)
    assert all(float(row[t]) > 0 for row in rows[2:] for t in times)
    assert main(["plot", str(run), "--out", str(tmp_path / "learning.png")]) == 0


# --------------------------------------------------------------------------- (10) checkpoints


@pytest.mark.parametrize(
    "content",
    [b"\x80\x02garbage", os.urandom(2000), b"PK\x03\x04 not a zip"],
    ids=["pickle", "random", "zip"],
)
def test_a_garbage_checkpoint_never_suggests_unsafe_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / CHECKPOINT).write_bytes(content)
    for argv in (["evaluate", str(tmp_path)], ["train", "--out", str(tmp_path), "--resume"]):
        assert main(argv) == 2
        line = _one_line(capsys, f"metarl {argv[0]}: error: checkpoint '{tmp_path}/")
        assert "is corrupt or not a metarl checkpoint" in line
        assert "weights_only" not in line and "trusted" not in line


def test_a_checkpoint_without_its_fields_is_not_a_metarl_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"format": 1, "iteration": 3}, tmp_path / CHECKPOINT)
    assert main(["evaluate", str(tmp_path)]) == 2
    line = _one_line(capsys, "metarl evaluate: error: ")
    assert "is not a metarl checkpoint (no config, learner, rngs)" in line
