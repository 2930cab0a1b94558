"""The config's ``device``: resolved (``cuda`` without CUDA is a one-line config error), the
learners' tensors on it, the transfers where the design puts them (weights to the sampler's CPU
once per sampling call, episodes and data batches to the device once), checkpoints on the CPU.

The suite runs without a GPU. Two stand-ins exercise the transfer code here: PyTorch's ``meta``
device (tensors with shapes and no data), on which the whole meta-derivative path runs and
fails if any tensor it creates lands on the CPU instead of its inputs' device; and spies that
record the learners' moves on a CPU device. ``benchmarks/gpu_check.py`` runs on a real GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_maml_rl import D, make_meta_batch, small_policy

from metarl.cli import main
from metarl.config import ConfigError, InnerLoopConfig, load_config
from metarl.devices import cpu_copy, resolve_device
from metarl.rl import learners
from metarl.rl.episodes import EpisodeBatch
from metarl.rl.maml_trpo import MetaBatch, MetaObjective, adapt_meta_batch
from metarl.rl.mlp_accelerator import accelerate
from metarl.rl.trpo import flatten_params
from metarl.rngs import Rngs
from metarl.supervised import sinusoid
from metarl.trainer import load_checkpoint

META = torch.device("meta")
CPU = torch.device("cpu")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
SINUSOID = ["kind=sinusoid", "model.hidden_sizes=[8]", "meta_batch_size=4", "iterations=2"]
SINUSOID += ["eval.num_tasks=4", "eval.shots=[5]", "eval.max_steps=1", "log_every=1"]
RL = ["kind=rl", "meta_batch_size=2", "episodes_per_task=2", "env.horizon=5"]
RL += ["policy.hidden_sizes=[8]", "iterations=1"]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# ---------------------------------------------------------------- resolving the config key


def test_auto_and_cpu_resolve_and_a_typo_is_a_config_error() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="config key 'device'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="config key 'device'"):
        load_config(None, ["device=gpu"])


@no_cuda
def test_cuda_without_cuda_is_a_one_line_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"config key 'device': 'cuda', but CUDA is not"):
        resolve_device("cuda")
    for kind in (SINUSOID, RL):
        out = tmp_path / kind[0]
        assert main(["train", "--out", str(out), "--device", "cuda", *_sets(kind)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "config key 'device'" in lines[0], lines
        assert "--device cpu" in lines[0]
        assert not out.exists()


# ---------------------------------------------------------------- the transfers


def test_episode_batches_move_every_tensor_to_the_device() -> None:
    batch = make_meta_batch(small_policy(), _theta(), InnerLoopConfig(lr=0.1)).train
    assert batch.to(CPU) is batch  # nothing to move
    moved = batch.to(META)
    tensors = {k: v for k, v in vars(moved).items() if isinstance(v, torch.Tensor)}
    assert len(tensors) == 9 and all(v.device == META for v in tensors.values())
    assert (moved.num_tasks, moved.episodes_per_task) == (batch.num_tasks, batch.episodes_per_task)


def _theta() -> dict[str, torch.Tensor]:
    return small_policy().init_params(torch.Generator().manual_seed(0), dtype=D)


@pytest.mark.parametrize("steps", [1, 2])
def test_the_meta_derivatives_keep_every_tensor_on_their_inputs_device(steps: int) -> None:
    """Adaptation, the meta-gradient, the line search's objective and every curvature product
    (generic and accelerated) run on the meta device: a tensor created on the CPU there would
    meet the meta tensors and fail (elementwise ops check devices on meta too)."""
    policy, inner = small_policy(), InnerLoopConfig(steps=steps, lr=0.1)
    theta = _theta()
    batch = make_meta_batch(policy, theta, inner)
    on_meta = MetaBatch(
        batch.train.to(META), batch.train_advantages.to(META),
        batch.valid.to(META), batch.valid_advantages.to(META), inner,
    )  # fmt: skip
    policy, theta = policy.to(META), {k: v.to(META) for k, v in theta.items()}
    adaptation = adapt_meta_batch(policy, theta, on_meta.train, on_meta.train_advantages, inner)
    objective = MetaObjective(policy, on_meta, adaptation)
    fast = accelerate(policy, objective)
    assert fast is not None
    v = flatten_params(theta)
    results = [
        objective.loss_and_grad(adaptation.theta)[1],
        *objective.loss_and_kl(theta),
        objective.kl_grad(theta),
        objective.gauss_newton_hvp(v),
        fast.kl_grad(theta),
        fast.gauss_newton_hvp(v),
    ]
    assert all(r.device == META for r in results)
    assert [tuple(r.shape) for r in results[-4:]] == [tuple(v.shape)] * 4


def _spy(moves: list[tuple[str, Any]], what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def spied(*args: Any) -> Any:
        out = fn(*args)
        moves.append((what, out))
        return out

    return spied


def test_the_rl_learner_moves_weights_and_episodes_once_per_sampling_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One meta-iteration: the weights go to the sampler's CPU twice (train, then the adapted
    ones for valid), each batch to the device once, and the adaptation and the outer step see
    exactly the moved batches."""
    moves: list[tuple[str, Any]] = []
    monkeypatch.setattr(learners, "to_cpu", _spy(moves, "weights", learners.to_cpu))
    monkeypatch.setattr(EpisodeBatch, "to", _spy(moves, "episodes", EpisodeBatch.to))
    seen: dict[str, Any] = {}
    adapt, outer = learners.adapt_meta_batch, learners.meta_trpo_step
    monkeypatch.setattr(learners, "adapt_meta_batch", _spy(moves, "adapt", adapt))

    def outer_step(*args: Any, **kwargs: Any) -> Any:
        seen["batch"] = args[2]
        return outer(*args, **kwargs)

    monkeypatch.setattr(learners, "meta_trpo_step", outer_step)
    rngs = Rngs.from_seed(0)
    learner = learners.MAMLTRPOLearner(load_config(None, [*RL, "device=cpu"]), rngs)
    try:
        assert learner.device == CPU and learner._acting is learner.policy
        learner.step(rngs)
    finally:
        learner.close()
    kinds = [what for what, _ in moves]
    assert kinds == ["weights", "episodes", "adapt", "weights", "episodes"]
    assert moves[3][1]["mlp.0.weight"].shape[0] == 2  # the adapted weights, one per task
    assert seen["batch"].train is moves[1][1] and seen["batch"].valid is moves[4][1]
    assert all(v.device == CPU for v in learner.params.values())


def test_the_rl_learner_acts_with_a_cpu_policy_when_it_learns_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With another device the learner's policy is moved there and the sampler gets a
    separate CPU policy of the same architecture (here the meta device stands in)."""
    monkeypatch.setattr(learners, "resolve_device", lambda name: META)
    config = load_config(None, RL)
    env = learners.make_env(config.env.id, normalize_actions=True)
    try:
        policy, acting = learners.device_policies(config, env)
    finally:
        env.close()
    assert policy is not acting and policy.spec() == acting.spec()
    assert {p.device for p in policy.parameters()} == {META}
    assert {p.device for p in acting.parameters()} == {CPU}


# ---------------------------------------------------------------- checkpoints


def test_checkpoints_hold_cpu_copies_and_load_onto_the_learners_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rngs = Rngs.from_seed(0)
    learner = sinusoid.SinusoidLearner(load_config(None, [*SINUSOID, "device=cpu"]), rngs)
    learner.step(rngs)
    state = learner.state_dict()
    for value in [*state["params"].values(), state["optimizer"]["state"][0]["exp_avg"]]:
        assert value.device == CPU and not value.requires_grad
    assert state["params"]["net.0.weight"].data_ptr() != learner.params["net.0.weight"].data_ptr()
    moved: list[torch.device] = []
    real = torch.Tensor.copy_

    def copy_(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        moved.append(self.device)
        return real(self, src, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    learner.load_state_dict(state)  # the weights are copied into the learner's own tensors
    assert moved == [learner.device] * len(state["params"])
    leaf = torch.ones(2, requires_grad=True)
    nested = cpu_copy({"a": [leaf], "b": (1, "x")})
    assert nested["b"] == (1, "x") and nested["a"][0] is not leaf
    assert not nested["a"][0].requires_grad


def test_device_overrides_on_train_resume_and_evaluate(tmp_path: Path) -> None:
    """``--device`` overrides the config (a config saying cuda trains with --device cpu), may
    change on resume, and lets a checkpoint whose config names another device evaluate here."""
    config = tmp_path / "cuda.yaml"
    config.write_text("kind: sinusoid\ndevice: cuda\n")
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--device", "cpu", *_sets(SINUSOID)]) == 0
    assert load_checkpoint(run).config.device == "cpu"
    again = ["train", str(config), "--out", str(run), "--resume", "--device", "auto"]
    assert main([*again, *_sets([*SINUSOID[:-5], "iterations=3", *SINUSOID[-4:]])]) == 0
    ckpt = run / "checkpoint.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["device"] = "cuda"  # as if trained on a GPU machine
    torch.save(payload, ckpt)
    if not torch.cuda.is_available():
        assert main(["evaluate", str(run)]) == 2
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert (run / "adaptation.csv").is_file()
