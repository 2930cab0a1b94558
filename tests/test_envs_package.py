"""The task envs are the package ``metarl.envs`` (the top-level ``envs/`` folder), which no
folder of a user's can shadow: not one named ``envs`` (the old import name) nor one named
``metarl_envs``, first on ``sys.path`` or in the working directory (docs/layout.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import metarl
from metarl import envs

ROOT = Path(__file__).resolve().parents[1]
METARL = str(Path(sys.executable).parent / "metarl")
TINY = ["iterations=1", "meta_batch_size=2", "episodes_per_task=2", "env.horizon=5"]
TINY += ["policy.hidden_sizes=[8]"]


def _python(code: str, cwd: Path, pythonpath: str | None = None) -> str:
    """Run ``code`` in a fresh interpreter; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_metarl_envs_is_the_envs_folder_and_registers_the_envs() -> None:
    assert metarl.envs is envs
    assert Path(envs.__file__).resolve() == ROOT / "envs" / "__init__.py"
    assert gym.spec("metarl/Navigation2D-v0").entry_point == (
        "metarl.envs.navigation:Navigation2DEnv"
    )
    assert "envs" not in sys.modules or sys.modules["envs"] is not envs


@pytest.mark.parametrize("where", ["repo", "elsewhere"])
def test_import_metarl_envs_from_the_repo_and_from_elsewhere(tmp_path: Path, where: str) -> None:
    """From the repository root a ``metarl/`` source folder is first on ``sys.path`` (not the
    editable install's finder); elsewhere the install serves ``metarl``. Either way
    ``metarl.envs`` is this checkout's folder, and ``gymnasium.make("metarl.envs:...")`` needs
    no import first."""
    cwd = ROOT if where == "repo" else tmp_path
    out = _python(
        """
        import sys
        import gymnasium as gym
        env = gym.make("metarl.envs:metarl/Navigation2D-v0")
        import metarl.envs
        print(metarl.envs.__file__)
        print(sys.modules["metarl"].__file__)
        print(type(env.unwrapped).__module__)
        """,
        cwd,
        pythonpath="" if where == "repo" else None,
    ).split()
    assert [Path(p).resolve() for p in out[:2]] == [
        ROOT / "envs" / "__init__.py",
        ROOT / "metarl" / "__init__.py",
    ]
    assert out[2] == "metarl.envs.navigation"


def _shadowing_folders(root: Path) -> None:
    """A user's own ``envs`` package (registering an env of theirs on our Navigation2D) and a
    ``metarl_envs`` package that would break anything importing it."""
    (root / "envs").mkdir()
    (root / "envs" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import gymnasium
            gymnasium.register(
                id="user/Nav-v0", entry_point="metarl.envs.navigation:Navigation2DEnv",
                max_episode_steps=100,
            )
            """
        )
    )
    (root / "metarl_envs").mkdir()
    (root / "metarl_envs" / "__init__.py").write_text("raise ImportError('not ours')\n")


def _train(cmd: list[str], cwd: Path, out: str, *sets: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    args = [*cmd, "train", "--out", out, "--no-progress"]
    for item in [*TINY, *sets]:
        args += ["--set", item]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_users_envs_folder_shadows_nothing(tmp_path: Path) -> None:
    """The user's folders are first on ``sys.path`` (``PYTHONPATH``) and in the working
    directory: ``metarl train`` trains on our envs all the same (in worker processes too),
    and the user's ``envs`` package is theirs to use (``envs:user/Nav-v0``)."""
    _shadowing_folders(tmp_path)
    done = _train([METARL], tmp_path, "ours", "sampler.backend=processes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ours" / "checkpoint.pt").is_file()
    done = _train([sys.executable, "-m", "metarl"], tmp_path, "theirs", "env.id=envs:user/Nav-v0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "theirs" / "checkpoint.pt").is_file()
