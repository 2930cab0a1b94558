"""Configs explained from their dataclasses: docs/config.md is current, ``metarl config show``
loads back and marks what changed, ``metarl --version``, ``python -m metarl``."""

import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import metarl
from metarl.cli import main
from metarl.config import CONFIG_KINDS, config_from_dict, config_to_dict, field_docs, load_config
from metarl.config_docs import REGENERATE, config_reference, describe_config

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs" / "config.md"


def test_docs_config_md_is_current() -> None:
    current = config_reference()
    written = DOCS.read_text() if DOCS.is_file() else ""
    assert written == current, (
        f"{DOCS.relative_to(ROOT)} is out of date with the config dataclasses; regenerate it "
        f"from the repository root with: .venv/bin/{REGENERATE}"
    )


def _flat(config: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every field of a config (sections walked, tuples as lists)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = list(value) if isinstance(value, tuple) else value
    return out


def _kind_tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """kind -> key -> the cells of its row (type, default, allowed, description)."""
    tables: dict[str, dict[str, list[str]]] = {}
    kind = ""
    for line in markdown.splitlines():
        if line.startswith("## kind: "):
            kind = line.removeprefix("## kind: ")
            tables[kind] = {}
        match = re.match(r"\| `([\w.]+)` \| (.*) \|$", line)
        if match:
            tables[kind][match[1]] = re.split(r"(?<!\\)\| ", match[2] + " ")
    return tables


def test_the_reference_lists_every_key_of_every_kind_with_its_kinds_default() -> None:
    tables = _kind_tables(config_reference())
    assert list(tables) == list(CONFIG_KINDS)
    for kind, cls in CONFIG_KINDS.items():
        defaults = _flat(cls())
        assert set(tables[kind]) == set(defaults), kind
        for key, value in defaults.items():
            default = tables[kind][key][1].strip().strip("`")
            assert yaml.safe_load(default) == value, (kind, key)
    rl = tables["rl"]
    assert rl["inner.lr"][1].strip() == "`0.5`"  # the rl kind's default, not the section's 0.01
    assert rl["trpo.backtrack_ratio"][2].strip() == "> 0 and < 1"
    assert rl["sampler.backend"][0].strip() == r"'local' \| 'processes' \| 'ray'"
    doc = " ".join(field_docs(CONFIG_KINDS["rl"])["meta_batch_size"].split())
    assert rl["meta_batch_size"][3].strip() == doc


def test_config_show_is_the_config_as_commented_yaml_with_changes_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("kind: rl\niterations: 7\nenv:\n  horizon: 20\n")
    sets = ["--set", "inner.lr=0.05", "--set", "policy.hidden_sizes=[8, 8]"]
    assert main(["config", "show", str(base), *sets]) == 0
    text = capsys.readouterr().out
    config = load_config(base, ["inner.lr=0.05", "policy.hidden_sizes=[8, 8]"])
    assert text == describe_config(config)
    assert config_from_dict(yaml.safe_load(text)) == config  # it loads back
    changed = [line.split(":")[0].strip() for line in text.splitlines() if "# changed" in line]
    assert changed == ["iterations", "lr", "horizon", "hidden_sizes"]
    assert "# Keys that differ from the defaults of kind 'rl': iterations, inner.lr, " in text
    assert (
        "  # an integer >= 1; default: 100\n  horizon: 20  # changed\n" in text
    )  # type, bounds, default above the value
    for doc in field_docs(CONFIG_KINDS["rl"]).values():  # every docstring, word for word
        assert " ".join(doc.split()) in " ".join(text.replace("#", " ").split())
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    assert main(["config", "show", str(run)]) == 0  # a run directory: its config
    assert capsys.readouterr().out == text
    assert main(["config", "show", "--set", "inner.lr=-1"]) == 2
    assert capsys.readouterr().err.startswith("metarl config show: error: config key 'inner.lr'")


def test_config_docs_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out == config_reference()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"metarl {metarl.__version__} (Python ")
    assert importlib.metadata.version("metarl") == metarl.__version__


def test_python_m_metarl_trains_and_logs_plain_lines_into_a_pipe(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = ["kind=sinusoid", "model.hidden_sizes=[8]", "iterations=6", "log_every=3"]
    done = subprocess.run(
        [sys.executable, "-m", "metarl", "train", "--out", "run"]
        + [a for s in sets for a in ("--set", s)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "iteration 3/6",
        "iteration 6/6",
        "trained 6 iterations (now at 6 of 6); run directory run",
    ]
    assert done.stdout == ""
