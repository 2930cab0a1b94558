"""Config loading: defaults, overrides, and clear errors for bad input."""

import dataclasses
from pathlib import Path

import pytest

from metarl.config import (
    CONFIG_KINDS,
    ConfigError,
    SinusoidConfig,
    config_diff,
    config_from_dict,
    config_to_dict,
    field_docs,
    load_config,
)

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.yaml"))


def test_defaults_are_the_papers_sinusoid_settings() -> None:
    cfg = load_config(None, ["kind=sinusoid"])
    assert isinstance(cfg, SinusoidConfig)
    assert (cfg.meta_batch_size, cfg.meta_lr, cfg.inner.lr, cfg.inner.steps) == (25, 1e-3, 0.01, 1)
    assert cfg.model.hidden_sizes == (40, 40)
    assert (cfg.task.amplitude, cfg.task.k_support, cfg.task.k_query) == ((0.1, 5.0), 10, 10)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path: Path) -> None:
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_overrides_set_nested_keys_with_types() -> None:
    cfg = load_config(
        None,
        [
            "kind=sinusoid",
            "inner.lr=1e-3",
            "model.hidden_sizes=[8, 8, 8]",
            "inner.first_order=true",
            "iterations=5",
        ],
    )
    assert cfg.inner.lr == 1e-3 and cfg.inner.first_order is True
    assert cfg.model.hidden_sizes == (8, 8, 8) and cfg.iterations == 5
    assert config_diff(load_config(None, ["kind=sinusoid"]), cfg) == [
        "inner.first_order",
        "inner.lr",
        "iterations",
        "model.hidden_sizes",
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "inner.lrr=0.1",
            r"unknown config key 'inner.lrr' \(did you mean 'inner.lr'\?\); "
            r"allowed: steps, lr, first_order",
        ),
        (
            "meta_batch_size=25x",
            r"'meta_batch_size': value '25x' is not allowed; expected an "
            r"integer",
        ),
        ("meta_batch_size=2.5", r"'meta_batch_size': value 2.5 .* expected an integer"),
        ("inner.lr=-0.1", r"'inner.lr': value -0.1 is not allowed; expected values > 0"),
        ("meta_lr=0", r"'meta_lr': value 0.0 is not allowed; expected values > 0"),
        ("inner.first_order=1", r"'inner.first_order': value 1 .* expected true or false"),
        ("model.activation=gelu", r"'model.activation': value 'gelu' .* one of 'relu' \| 'tanh'"),
        ("task.amplitude=[5.0, 0.1]", r"'task.amplitude'.*low <= high"),
        ("model.hidden_sizes=[]", r"'model.hidden_sizes'.*not empty"),
        ("kind=chess", r"'kind': value 'chess' .* one of 'sinusoid'"),
        ("inner=3", r"'inner': value 3 .* a mapping"),
        ("novalue", r"not of the form key=value"),
        ("inner.lr=[1", r"override 'inner.lr=\[1': the value '\[1' is not valid YAML"),
        ('env.id="x', r"the value '\"x' is not valid YAML"),
    ],
)
def test_bad_overrides_name_key_value_and_what_is_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["kind=sinusoid", override])


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: {lr: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    bad.write_text("kind: sinusoid\nmeta_lr: -1\n")
    with pytest.raises(ConfigError, match="'meta_lr': value -1"):
        load_config(bad)


def test_configs_are_frozen() -> None:
    cfg = load_config(None, ["kind=sinusoid"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def _all_config_classes():
    seen, todo = [], list(CONFIG_KINDS.values())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo += [
            f.default_factory
            for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(f.default_factory)
        ]
    return seen


@pytest.mark.parametrize("cls", _all_config_classes(), ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls: type) -> None:
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_a_config_file_extends_its_base(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: rl\niterations: 7\ninner: {lr: 0.3, steps: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ninner: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "b.yaml", ["seed=4"])
    assert (cfg.kind, cfg.iterations, cfg.inner.lr, cfg.inner.steps, cfg.seed) == (
        "rl",
        7,
        0.2,
        2,
        4,
    )
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml' does not exist"):
        load_config(tmp_path / "d.yaml")


def test_built_in_default_is_maml_trpo_on_navigation_with_the_papers_settings() -> None:
    cfg = load_config(None)
    assert (cfg.kind, cfg.method, cfg.env.id, cfg.env.horizon) == (
        "rl",
        "maml",
        "metarl/Navigation2D-v0",
        100,
    )
    assert (cfg.meta_batch_size, cfg.episodes_per_task, cfg.inner.lr, cfg.inner.steps) == (
        20,
        20,
        0.5,
        1,
    )
    assert (cfg.trpo.max_kl, cfg.trpo.cg_iters, cfg.trpo.hvp) == (0.01, 10, "finite_difference")
    assert (cfg.policy.hidden_sizes, cfg.gamma, cfg.gae_lambda) == ((100, 100), 0.99, 1.0)
    assert config_from_dict(config_to_dict(cfg)) == load_config(
        Path(__file__).parent.parent / "experiments" / "configs" / "navigation2d.yaml",
        ["eval.lr=null"],
    )
