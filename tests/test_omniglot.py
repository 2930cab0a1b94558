"""The Omniglot learner end to end: learning, determinism, evaluation, and the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omniglot_fixture import Layout, fixture_files, write_zips
from PIL import Image

from metarl.cli import main
from metarl.config import ConfigError, OmniglotConfig, load_config
from metarl.rngs import Rngs
from metarl.supervised.omniglot import OmniglotLearner, evaluate_omniglot
from metarl.trainer import load_checkpoint

CONFIG = Path(__file__).parent.parent / "experiments" / "configs" / "omniglot_5way1shot.yaml"
# 20 characters (80 classes): the first 12 characters train, the other 8 are held out.
LAYOUT = Layout(alphabets=(3, 2), characters=4, drawings=8)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_zips(tmp_path_factory.mktemp("omniglot"), fixture_files(LAYOUT))


def _small(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.cache_dir=null",
        "data.train_characters=12",
        "model.hidden=8",
        "meta_batch_size=4",
        "task.query=3",
        "eval.query=3",
        "eval.num_tasks=20",
        *extra,
    ]


def _config(root: Path, *extra: str) -> OmniglotConfig:
    config: OmniglotConfig = load_config(CONFIG, _small(root, *extra))
    return config


def test_short_meta_training_lifts_query_accuracy_clearly_above_chance(root: Path) -> None:
    cfg = _config(root, "model.hidden=16", "meta_batch_size=8", "eval.num_tasks=100")
    rngs = Rngs.from_seed(0)
    learner = OmniglotLearner(cfg, rngs)
    before = evaluate_omniglot([(cfg, learner.weights())], cfg.eval)
    for _ in range(40):
        stats = learner.step(rngs)
    after = evaluate_omniglot([(cfg, learner.weights())], cfg.eval)
    assert abs(after[0]["mean_accuracy"] - 0.2) < 0.05  # unadapted: labels are a fresh shuffle
    one_step = after[1]["mean_accuracy"]
    assert one_step > 0.2 + 0.4, after  # 5-way chance is 0.2
    assert one_step > before[1]["mean_accuracy"] + 0.2, (before, after)  # meta-learning paid
    assert stats["post_adapt_query_accuracy"] > 0.6


def test_same_seed_gives_identical_weights_and_another_seed_does_not(root: Path) -> None:
    cfg = _config(root)

    def run(seed: int) -> dict[str, torch.Tensor]:
        rngs = Rngs.from_seed(seed)
        learner = OmniglotLearner(cfg, rngs)
        for _ in range(3):
            learner.step(rngs)
        return learner.weights()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_vectorized_and_task_by_task_training_agree(root: Path) -> None:
    weights = []
    for vectorize in ("true", "false"):
        cfg = _config(root, "dtype=float64", f"vectorize_inner={vectorize}")
        rngs = Rngs.from_seed(0)
        learner = OmniglotLearner(cfg, rngs)
        for _ in range(2):
            learner.step(rngs)
        weights.append(learner.weights())
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=1e-9, atol=1e-11)


def test_evaluation_scores_every_run_on_the_same_held_out_tasks(root: Path) -> None:
    cfg = _config(root, "eval.num_tasks=60", "eval.max_steps=2")  # 60 tasks: two chunks
    params = OmniglotLearner(cfg, Rngs.from_seed(0)).weights()
    rows = evaluate_omniglot([(cfg, params), (cfg, params)], cfg.eval)
    assert [r["step"] for r in rows] == [0, 1, 2] * 2
    assert [r["mean_accuracy"] for r in rows[:3]] == [r["mean_accuracy"] for r in rows[3:]]
    assert all(r["num_tasks"] == 60 and r["shots"] == 1 for r in rows)
    again = evaluate_omniglot([(cfg, params)], cfg.eval)
    assert [r["mean_accuracy"] for r in again] == [r["mean_accuracy"] for r in rows[:3]]
    other = evaluate_omniglot([(cfg, params)], _config(root, "eval.seed=3").eval)
    assert other[1]["mean_accuracy"] != rows[1]["mean_accuracy"]
    twenty = _config(root, "task.ways=20")
    with pytest.raises(ConfigError, match="cannot compare a 20-way run with a 5-way run"):
        evaluate_omniglot([(cfg, params), (twenty, params)], cfg.eval)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _train(out: Path, root: Path, iterations: int, *extra: str, flags: tuple[str, ...] = ()) -> int:
    sets = _small(root, f"iterations={iterations}", "log_every=3", "checkpoint_every=3", *extra)
    overrides = [a for s in sets for a in ("--set", s)]
    return main(["train", str(CONFIG), "--out", str(out), *overrides, *flags])


def test_cli_trains_resumes_and_evaluates(root: Path, tmp_path: Path) -> None:
    assert _train(tmp_path / "straight", root, 6) == 0
    assert _train(tmp_path / "broken", root, 3, flags=("--no-progress",)) == 0
    assert _train(tmp_path / "broken", root, 6, flags=("--resume",)) == 0
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "broken")
    assert a.iteration == b.iteration == 6
    assert all(torch.equal(v, b.learner["params"][k]) for k, v in a.learner["params"].items())
    progress = _rows(tmp_path / "straight/progress.csv")
    assert progress == _rows(tmp_path / "broken/progress.csv") and len(progress) == 2
    assert list(progress[0]) == ["iteration", "post_adapt_query_loss", "post_adapt_query_accuracy"]
    assert (tmp_path / "straight/tb").is_dir()

    assert _train(tmp_path / "fo", root, 3, "inner.first_order=true") == 0
    run = str(tmp_path / "straight")
    assert main(["evaluate", run, "--compare", str(tmp_path / "fo"), "--steps", "2"]) == 0
    rows = _rows(tmp_path / "straight/adaptation.csv")
    assert list(rows[0]) == [
        "method",
        "shots",
        "step",
        "mean_accuracy",
        "ci95_accuracy",
        "num_tasks",
    ]
    assert [(r["method"], r["step"]) for r in rows] == [
        (m, str(s)) for m in ("maml", "fomaml") for s in range(3)
    ]
    assert all(r["num_tasks"] == "20" and 0 < float(r["ci95_accuracy"]) < 0.5 for r in rows)
    with Image.open(tmp_path / "straight/adaptation.png") as img:
        assert img.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))


def test_cli_reports_a_missing_data_set_without_a_traceback(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_omniglot"
    args = ["train", str(CONFIG), "--out", str(tmp_path / "run"), "--set", f"data.root={missing}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        f"metarl train: error: config key 'data.root': Omniglot root '{missing}' does not " in err
    )
    assert "expected a folder holding images_background.zip and images_evaluation.zip" in err
    assert "Traceback" not in err
    for override, message in [
        (
            "task.query=10",
            "config keys 'task.ways', 'task.shots', 'task.query': 1 support + 10 "
            "query images per class need 11 drawings of each character; there are 8",
        ),
        (
            "data.train_characters=20",
            "config key 'data.train_characters': value 20 leaves no meta-test characters",
        ),
        ("model.blocks=6", "config key 'model.blocks': ConvNet: the image is too small"),
    ]:
        assert _train(tmp_path / override, root, 2, override, "model.downsample=max_pool") == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
