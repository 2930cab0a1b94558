"""The committed results stay usable: every checkpoint under ``results/*/runs/`` loads with the
current code at the iteration its ``progress.csv`` ends on (a run still in progress is said to
be in its folder's README, with how to continue it), the tables quote the CSVs, and the
commands that made the runs give their configs."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import metarl
from metarl.config import RLConfig, config_diff, load_config
from metarl.rl.sampling.envs import make_env

ROOT = Path(__file__).resolve().parents[1]
RUN_DIRS = sorted(p.parent for p in (ROOT / "results").glob("*/runs/*/checkpoint.pt"))


def _last_iteration(progress: Path) -> int:
    with progress.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{progress} has no rows"
    return int(float(rows[-1]["iteration"]))


def test_there_are_committed_runs() -> None:
    assert RUN_DIRS, "no results/*/runs/*/checkpoint.pt found"


@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_committed_checkpoint_loads_at_its_last_logged_iteration(run_dir: Path) -> None:
    run = metarl.load_run(run_dir)
    assert run.iteration == _last_iteration(run_dir / "progress.csv")
    if run.iteration < run.config.iterations:  # in progress: the README says so and how to go on
        readme = (run_dir.parents[1] / "README.md").read_text()
        assert f"iteration {run.iteration} of {run.config.iterations}" in readme
        assert f"--out runs/{run_dir.name} --resume" in readme
    policy = metarl.load_policy(run)
    task = policy.sample_tasks(1, seed=0)[0]
    env = policy.make_env(task)
    obs, _ = env.reset(seed=0)
    action = policy.act(obs, deterministic=True)
    assert env.action_space.shape == tuple(action.shape)


def _csv_means(path: Path) -> dict[int, float]:
    """Per step, the mean return of the run itself (the first method of its evaluation)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        int(r["step"]): float(r["mean_return"]) for r in rows if r["method"] == rows[0]["method"]
    }


@pytest.mark.parametrize(
    "task_dir", sorted(p.parent for p in (ROOT / "results").glob("*/runs")), ids=lambda p: p.name
)
def test_results_table_quotes_the_runs_own_csv(task_dir: Path) -> None:
    """Each table row whose label links a run (``| [MAML, seed 0](runs/maml_seed0/) | a | b |
    ...``) quotes that run's ``adaptation.csv`` to the digits shown; every run evaluated in
    its own directory has such a row."""
    text = (task_dir / "README.md").read_text()
    rows = re.findall(r"^\| \[[^\]]+\]\(runs/([^)/]+)/?\) \|(.*)\|\s*$", text, flags=re.M)
    quoted_runs = {run for run, _ in rows}
    evaluated = {p.parent.name for p in (task_dir / "runs").glob("*/adaptation.csv")}
    assert evaluated <= quoted_runs, f"runs without a table row: {sorted(evaluated - quoted_runs)}"
    for run, cells in rows:
        means = _csv_means(task_dir / "runs" / run / "adaptation.csv")
        values = [c.split("(")[0].strip() for c in cells.split("|")]
        assert any(values), f"the row of {run} quotes no figure"
        for step, value in enumerate(values):
            if not value:  # a step the method has no figure for (an oracle does not adapt)
                continue
            decimals = len(value.partition(".")[2])
            assert float(value) == pytest.approx(means[step], abs=0.5 * 10**-decimals + 1e-9), (
                run,
                step,
                values,
                means,
            )


def _train_commands(readme: Path) -> list[list[str]]:
    """The arguments of every ``metarl train CONFIG --out DIR ...`` command (not ``--resume``)
    in a README's bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            args = shlex.split(line, comments=True)
            if args[:2] == ["metarl", "train"] and "--resume" not in args:
                commands.append(args[2:])
    return commands


# Keys in which a committed run may differ from its README command, and why that changes nothing
# the run did. Half-cheetah episodes never end before the horizon, so a ``batch: steps`` meta-batch
# is the very batch of ``batch: episodes`` (test_step_budget.py); runs that predate the key were
# trained with ``episodes``.
SAME_BATCH_TASKS = {"halfcheetah_vel", "halfcheetah_dir"}


def _setting(env: Any, key: str) -> Any:
    """The value an env holds for its constructor's ``env.kwargs`` ``key`` (Gymnasium's MuJoCo
    envs keep most under the name with a leading underscore)."""
    name = key.removeprefix("env.kwargs.")
    for attr in (name, f"_{name}"):
        if hasattr(env, attr):
            return getattr(env, attr)
    raise AssertionError(f"{type(env).__name__} holds no setting {name!r}")


def _same_env(a: RLConfig, b: RLConfig, keys: list[str]) -> bool:
    """Env kwargs ``keys`` that differ only in naming a value the other config leaves to the env
    (v5's frame skip of 5, or one an env id registered with the paper's; Ant-v5's observation
    without the position) give envs of the same class, time step and observation, whose
    attributes of those names agree."""
    envs = [make_env(c.env.id, env_kwargs=c.env.kwargs) for c in (a, b)]
    first, second = (env.unwrapped for env in envs)
    same = (
        type(first) is type(second)
        and first.dt == second.dt  # type: ignore[attr-defined]
        and first.observation_space == second.observation_space
        and all(_setting(first, k) == _setting(second, k) for k in keys)
    )
    for env in envs:
        env.close()
    return same


COMMANDS = [
    (readme.parent, args)
    for readme in sorted((ROOT / "results").glob("*/README.md"))
    for args in _train_commands(readme)
]


@pytest.mark.parametrize(
    ("task_dir", "args"), COMMANDS, ids=[f"{t.name}:{a[a.index('--out') + 1]}" for t, a in COMMANDS]
)
def test_readme_train_commands_give_the_committed_runs_config(
    task_dir: Path, args: list[str]
) -> None:
    """A results README's ``metarl train`` command, run from its folder's viewpoint (configs from
    the repository root), gives the config the committed run under that ``--out`` saved."""
    out = task_dir / args[args.index("--out") + 1]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert (out / "config.yaml").is_file(), f"{out} is not a committed run"
    command = load_config(ROOT / args[0], overrides)
    saved = load_config(out / "config.yaml", saved=True)
    diff = config_diff(command, saved)
    if task_dir.name in SAME_BATCH_TASKS and "batch" in diff:
        diff.remove("batch")
    env_keys = [k for k in diff if k.startswith("env.kwargs")]
    if env_keys and _same_env(command, saved, env_keys):
        diff = [k for k in diff if k not in env_keys]
    assert not diff, f"{' '.join(args)} differs from {out}/config.yaml in {diff}"


def _run_script(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "results" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_per_direction_script_finds_the_oracle_running_each_way() -> None:
    out = _run_script(
        "halfcheetah_dir/per_direction.py",
        str(ROOT / "results/halfcheetah_dir/runs/oracle"),
        "--episodes",
        "1",
    )
    velocity = {
        int(m[0]): float(m[1])
        for m in re.findall(r"direction ([+-]1):.*mean x velocity ([+-][\d.]+)", out)
    }
    assert velocity.keys() == {-1, 1}, out
    assert velocity[-1] < -0.5 and velocity[1] > 0.5, out


def test_goal_distance_script_finds_the_oracle_nearing_the_goal() -> None:
    out = _run_script(
        "ant_goal/goal_distance.py",
        str(ROOT / "results/ant_goal/runs/oracle"),
        "--steps",
        "0",
        "--tasks",
        "2",
        "--episodes",
        "1",
    )
    m = re.search(r"mean over 2 tasks: distance at start ([\d.]+), at the end ([\d.]+)", out)
    assert m, out
    assert float(m[2]) < float(m[1]), out
