"""Every snippet in README.md runs: its Python blocks as written, its shell blocks' commands.

Python blocks are executed as they stand, in README order, in one scratch directory (where
``experiments/`` is the repository's); a block whose first line is ``# file: NAME.py`` is also
saved there as NAME.py first (the README tells the reader to save it so), so that the commands
after it find it. In shell blocks, every ``metarl`` command runs through
the CLI in that directory, in order (so an ``evaluate`` finds the run a ``train`` before it
made); a ``train`` runs on tiny sizes (``--set`` overrides appended: one iteration, a few short
episodes, a small network), which checks the config, the overrides and the whole path without
the hours a real run takes. ``make`` lines must name a Makefile target; ``pip install`` lines
must name extras the project defines.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from metarl.cli import main
from metarl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"

TINY = {
    "rl": [
        "iterations=1", "meta_batch_size=2", "episodes_per_task=2", "env.horizon=5",
        "policy.hidden_sizes=[8]", "eval.num_tasks=2", "eval.episodes_per_task=2",
        "eval.max_steps=1", "sampler.num_workers=1", "trpo.cg_iters=2",
    ],
    "sinusoid": [
        "iterations=2", "meta_batch_size=2", "model.hidden_sizes=[8]", "eval.num_tasks=2",
        "eval.shots=[5]", "eval.max_steps=1",
    ],
    "omniglot": [
        "iterations=1", "meta_batch_size=2", "model.hidden=4", "task.query=1",
        "eval.num_tasks=2", "eval.max_steps=1", "eval.query=1",
    ],
}  # fmt: skip


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    text = README.read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands() -> list[list[str]]:
    """Each command line of the README's shell blocks (continuations joined, comments and
    leading ``VAR=value`` assignments dropped) as a word list."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words:
                commands.append(words)
    return commands


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A scratch working directory with the repository's experiments/ in it."""
    path = tmp_path_factory.mktemp("readme")
    (path / "experiments").symlink_to(ROOT / "experiments")
    old = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)


def test_the_readme_has_snippets_of_both_kinds() -> None:
    assert len(blocks("python")) >= 3
    assert sum(words[0] == "metarl" for words in shell_commands()) >= 5


def _run_metarl(words: list[str]) -> None:
    args = [w for w in words[1:] if w != "--no-progress"]
    if args[:1] == ["train"]:
        config = args[1] if len(args) > 1 and not args[1].startswith("-") else None
        overrides = [a.split("=", 1)[1] if a.startswith("--set=") else a for a in args]
        sets = [overrides[i + 1] for i, a in enumerate(overrides[:-1]) if a == "--set"]
        kind = load_config(config, sets).kind
        if kind == "omniglot" and not OMNIGLOT.is_dir():
            pytest.skip(f"no Omniglot copy at {OMNIGLOT}")
        args += [x for o in TINY[kind] for x in ("--set", o)]
    if args[:1] == ["evaluate"] and "--num-tasks" not in args:
        args += ["--num-tasks", "2"]
    assert main([*args, "--quiet"] if args[0] == "train" else args) == 0, words


def test_every_shell_command_runs(scratch: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    _save_files(scratch)
    for words in shell_commands():
        if words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), words
        elif words[:2] == ["pip", "install"]:
            for spec in words[2:]:
                for extra in re.findall(r"\[(.*?)\]", spec):
                    assert set(extra.split(",")) <= set(extras), words
        elif words[0] == "metarl":
            _run_metarl(words)
        else:
            raise AssertionError(f"README shell line not covered by this test: {words}")


def _save_files(scratch: Path) -> None:
    for block in blocks("python"):
        name = re.match(r"# file: (\S+\.py)\n", block)
        if name:
            (scratch / name.group(1)).write_text(block)


def test_every_python_block_runs(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_files(scratch)
    for i, block in enumerate(blocks("python")):
        module = types.ModuleType(f"readme_block_{i}")  # a real module: dataclasses, pickling
        monkeypatch.setitem(sys.modules, module.__name__, module)
        exec(compile(block, f"README.md python block {i}", "exec"), module.__dict__)
