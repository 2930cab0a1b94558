"""A user's own task env, named by a config without any path tricks: a file
(``path/to/file.py:Name-v0``) or a module of the working directory (``module:Name-v0``),
trained and evaluated through the command line, locally, in worker processes and on Ray."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from readme_example import ENV_ID, own_env_source

from metarl.cli import main
from metarl.rl.sampling.envs import resolve_env_id

METARL = str(Path(sys.executable).parent / "metarl")


TINY = [
    "--set",
    "meta_batch_size=2",
    "--set",
    "episodes_per_task=2",
    "--set",
    "env.horizon=10",
    "--set",
    "policy.hidden_sizes=[8]",
    "--set",
    "iterations=2",
    "--set",
    "eval.num_tasks=2",
    "--set",
    "eval.episodes_per_task=2",
    "--set",
    "eval.max_steps=1",
    "--no-progress",
]


def _write_env(path: Path, env_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(own_env_source().replace(ENV_ID, env_id))  # README's, under its own id


def _curve(run: Path) -> list[dict[str, str]]:
    with (run / "adaptation.csv").open() as f:
        return list(csv.DictReader(f))


def _train_and_evaluate(env_id: str, run: Path, *extra: str) -> None:
    assert main(["train", "--out", str(run), "--set", f"env.id={env_id}", *TINY, *extra]) == 0
    assert main(["evaluate", str(run)]) == 0
    rows = _curve(run)
    assert [r["step"] for r in rows] == ["0", "1"]
    assert all(-50 <= float(r["mean_return"]) < 0 for r in rows)  # reward -|x - target|


def test_a_file_named_env_trains_and_evaluates_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_env(tmp_path / "tasks" / "line.py", "mine/FileLineTarget-v0")
    monkeypatch.chdir(tmp_path)
    env_id = "tasks/line.py:mine/FileLineTarget-v0"
    _train_and_evaluate(env_id, Path("run"))
    # worker processes (forked) and an absolute path name the same file: imported once
    absolute = f"{tmp_path / 'tasks' / 'line.py'}:mine/FileLineTarget-v0"
    _train_and_evaluate(absolute, Path("workers"), "--set", "sampler.backend=processes")
    assert resolve_env_id(env_id) == resolve_env_id(absolute) == "mine/FileLineTarget-v0"
    assert sum(m.startswith("_metarl_envfile_line_") for m in sys.modules) == 1
    # from another directory the relative path names no file: one line, exit 2
    monkeypatch.chdir(tmp_path / "tasks")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"metarl evaluate: error: config key 'env.id': env id {env_id!r}: file 'tasks/line.py' "
        f"does not exist (relative to the working directory {tmp_path / 'tasks'})"
    )


def test_env_files_that_fail_or_register_nothing_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("broken.py").write_text("import gymnasium\nraise RuntimeError('no GPU here')\n")
    Path("empty.py").write_text("x = 1\n")
    expected = {
        "broken.py:mine/X-v0": "importing 'broken.py' raised RuntimeError: no GPU here",
        "empty.py:mine/X-v0": "'empty.py' was imported but did not register 'mine/X-v0'",
        "nope.py:mine/X-v0": "file 'nope.py' does not exist (relative to the working directory",
    }
    for env_id, message in expected.items():
        assert main(["train", "--out", str(tmp_path / "r"), "--set", f"env.id={env_id}"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / "r").exists()
    assert "broken.py" not in str(list(sys.modules))  # a failed import leaves no half module


def _metarl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [METARL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_metarl_command_finds_a_module_of_the_working_directory(tmp_path: Path) -> None:
    _write_env(tmp_path / "mymodule.py", "mine/ModuleLineTarget-v0")
    env_id = "mymodule:mine/ModuleLineTarget-v0"
    done = _metarl(tmp_path, "train", "--out", "run", "--set", f"env.id={env_id}", *TINY)
    assert done.returncode == 0, done.stderr
    done = _metarl(tmp_path, "evaluate", "run")
    assert done.returncode == 0, done.stderr
    assert len(_curve(tmp_path / "run")) == 2
    # elsewhere the module is not found, and the error says how to name it
    done = _metarl(tmp_path.parent, "evaluate", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "cannot import module 'mymodule'" in done.stderr
    assert "'path/to/mymodule.py:mine/ModuleLineTarget-v0'" in done.stderr


def test_ray_workers_import_a_file_named_env_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    _write_env(tmp_path / "line_ray.py", "mine/RayLineTarget-v0")
    monkeypatch.chdir(tmp_path)
    ray_sets = ["--set", "sampler.backend=ray", "--set", "sampler.num_workers=2"]
    # the tasks are instances of the file's TargetTask: each actor unpickles them by the
    # file's module name, which it has after importing the file (its set_task checks the type)
    env = textwrap.dedent(
        """
        import sys
        from metarl.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = ["train", "--out", "run", "--set", "env.id=line_ray.py:mine/RayLineTarget-v0"]
    done = subprocess.run(
        [sys.executable, "-c", env, *args, *TINY, *ray_sets],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 2 iterations" in done.stderr
