"""A policy network defined only here (LayerNorm and a residual block) plugged in by config key
``policy.network``: it trains through the command line and through Python on the local and
processes samplers, evaluates from its checkpoint, keeps "same seed, same numbers", and its
meta-derivatives are checked against finite differences in float64."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_maml_rl import D, central_fd_grad, make_meta_batch, perturbed, rel

from metarl.cli import main
from metarl.config import ConfigError, InnerLoopConfig, load_config
from metarl.rl.learners import make_rl_learner
from metarl.rl.maml_trpo import (
    MetaObjective,
    adapt_meta_batch,
    adapted_stats,
    meta_kl,
    meta_surrogate,
)
from metarl.rl.policies import CompositeLayerNorm, GaussianHead, NetworkSpec, Policy, PolicySpec
from metarl.rl.trpo import exact_hvp_closure, flat_grad, flatten_params, hvp_finite_difference
from metarl.rngs import Rngs
from metarl.trainer import load_checkpoint


class ResidualNet(nn.Module):
    """``obs -> tanh(LayerNorm(Linear)) -> + residual block -> Linear``."""

    def __init__(self, obs_dim: int, out_dim: int, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(obs_dim, width)
        self.norm = nn.LayerNorm(width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, obs: Tensor) -> Tensor:
        h = torch.tanh(self.norm(self.inp(obs)))
        out: Tensor = self.out(h + self.block(h))
        return out


def make_net(obs_dim: int, out_dim: int, width: int = 16) -> nn.Module:
    """The factory the config names: ``test_custom_network:make_net``."""
    return ResidualNet(obs_dim, out_dim, width)


def wrong_size(obs_dim: int, out_dim: int, **_: object) -> nn.Module:
    return nn.Linear(obs_dim, out_dim + 1)


NET = ["policy.network=test_custom_network:make_net", "policy.network_kwargs={width: 12}"]
TINY = ["kind=rl", "meta_batch_size=3", "episodes_per_task=4", "env.horizon=20", *NET]


def policy(width: int = 8) -> Policy:
    spec = PolicySpec(
        obs_dim=2,
        head=GaussianHead(act_dim=2, init_log_std=-0.5),
        network=NetworkSpec(factory="test_custom_network:make_net", kwargs={"width": width}),
    )
    return spec.build()


def test_initial_weights_are_the_networks_own_init_under_the_callers_generator() -> None:
    pol = policy()
    rng_state = torch.get_rng_state()
    a = pol.init_params(torch.Generator().manual_seed(3))
    b = pol.init_params(torch.Generator().manual_seed(3))
    c = pol.init_params(torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG untouched
    assert list(a)[:2] == ["net.inp.weight", "net.inp.bias"] and "net.norm.weight" in a
    assert list(a)[-1] == "log_std" and a.keys() == dict(pol.named_parameters()).keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.inp.weight"], c["net.inp.weight"])
    torch.testing.assert_close(a["net.norm.weight"], torch.ones(8))  # LayerNorm's own init
    bound = 1.0 / 2**0.5  # nn.Linear's own init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(a["net.inp.weight"].abs().max()) <= bound
    # the policy's output is the module's forward with those weights
    obs = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    net = make_net(2, 2, width=8)
    net.load_state_dict({k.removeprefix("net."): v for k, v in a.items() if k != "log_std"})
    torch.testing.assert_close(pol.dist_stats(a, obs)["mean"], net(obs))
    rebuilt = pol.spec().build()
    assert rebuilt.spec() == pol.spec() and type(rebuilt.network) is ResidualNet


@pytest.fixture(scope="module")
def custom64() -> tuple[Policy, dict[str, Tensor], object]:
    pol = policy()
    theta = perturbed(pol.init_params(torch.Generator().manual_seed(0), dtype=D), 1)
    return pol, theta, make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1), seed=5)


def test_meta_gradient_of_the_user_network_matches_finite_differences(custom64: tuple) -> None:
    pol, theta, batch = custom64
    adaptation = adapt_meta_batch(pol, theta, batch.train, batch.train_advantages, batch.inner)
    obj = MetaObjective(pol, batch, adaptation)
    grad = obj.loss_and_grad(obj.theta_old)[1]
    fd = central_fd_grad(lambda q: meta_surrogate(pol, q, batch), theta)
    assert rel(grad, fd) < 1e-6


@pytest.mark.parametrize("steps", [1, 2])
def test_hvps_of_the_user_network_match_finite_differences_of_the_meta_kl_gradient(
    custom64: tuple, steps: int
) -> None:
    """Gauss-Newton, exact and finite-difference products at theta_old (where the first is
    the meta-KL's Hessian too) against central differences of the autograd meta-KL gradient."""
    pol, theta, batch = custom64
    batch = type(batch)(
        batch.train, batch.train_advantages, batch.valid, batch.valid_advantages,
        InnerLoopConfig(steps=steps, lr=0.1),
    )  # fmt: skip
    adaptation = adapt_meta_batch(pol, theta, batch.train, batch.train_advantages, batch.inner)
    obj = MetaObjective(pol, batch, adaptation)
    old = adapted_stats(pol, theta, batch)

    def kl_grad(q: dict[str, Tensor]) -> Tensor:
        return flat_grad(lambda p: meta_kl(pol, p, batch, old), q)[1]

    v = torch.randn(
        flatten_params(theta).numel(), generator=torch.Generator().manual_seed(2), dtype=D
    )
    reference = hvp_finite_difference(kl_grad, theta, v, base_eps=1e-4)
    assert float(reference.norm()) > 1e-2 * float(v.norm())
    products = {
        "gauss_newton": obj.gauss_newton_hvp(v),
        "exact": exact_hvp_closure(obj.kl, obj.theta_old)(v),
        "finite_difference": hvp_finite_difference(obj.kl_grad, theta, v, base_eps=1e-4),
    }
    for name, product in products.items():
        assert rel(product, reference) < 1e-6, name


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("backend", ["local", "processes"])
def test_user_network_trains_and_evaluates_through_the_command_line(
    tmp_path: Path, backend: str
) -> None:
    run = tmp_path / "run"
    overrides = [*TINY, "iterations=3", f"sampler.backend={backend}", "trpo.hvp=gauss_newton"]
    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["train", "--out", str(run), *sets, "--no-progress", "--quiet"]) == 0
    rows = _rows(run / "progress.csv")
    assert len(rows) == 3 and all(float(r["trpo/step_accepted"]) == 1.0 for r in rows)
    assert all(float(r["trpo/loss_after"]) < float(r["trpo/loss_before"]) for r in rows)
    ckpt = load_checkpoint(run)
    params = ckpt.learner["params"]
    assert "net.block.0.weight" in params and params["net.inp.weight"].shape == (12, 2)
    initial = policy(12).init_params(Rngs.from_seed(0).torch)
    assert not torch.equal(params["net.inp.weight"], initial["net.inp.weight"])
    out = tmp_path / "eval"
    evaluate = ["evaluate", str(run), "--num-tasks", "2", "--steps", "1", "--episodes", "2"]
    assert main([*evaluate, "--out", str(out)]) == 0
    assert len(_rows(out / "adaptation.csv")) == 2  # returns after 0 and 1 steps


def _weights_after(iterations: int, extra: tuple[str, ...] = ()) -> dict[str, Tensor]:
    cfg = load_config(None, [*TINY, *extra])
    rngs = Rngs.from_seed(cfg.seed)
    learner = make_rl_learner(cfg, rngs)
    try:
        for _ in range(iterations):
            stats = learner.step(rngs)
            assert stats["trpo/step_accepted"] == 1.0
        return learner.weights()
    finally:
        learner.close()


def test_user_network_trains_from_python_same_seed_same_numbers_on_every_backend() -> None:
    local = _weights_after(2)
    again = _weights_after(2)
    processes = _weights_after(2, ("sampler.backend=processes",))
    gauss_newton = _weights_after(2, ("trpo.hvp=gauss_newton",))
    for k in local:
        assert torch.equal(local[k], again[k]) and torch.equal(local[k], processes[k])
    assert not all(torch.equal(local[k], gauss_newton[k]) for k in local)  # another product


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("policy.network=no_such_module:make", "cannot import 'no_such_module'"),
        ("policy.network=test_custom_network:nothing", "has no callable 'nothing'"),
        ("policy.network=make_net", "not of the form 'module:function'"),
        ("policy.network=test_custom_network:wrong_size", r"maps observations \[3, 2\] to"),
        ("policy.network_kwargs={depth: 3}", "TypeError: .*depth"),
    ],
)
def test_a_network_that_cannot_serve_is_a_config_error_naming_the_key(
    override: str, message: str
) -> None:
    cfg = load_config(None, [*TINY, override])
    with pytest.raises(ConfigError, match=f"config key 'policy.network'.*{message}"):
        make_rl_learner(cfg, Rngs.from_seed(0))


def test_layer_norm_runs_as_elementwise_ops_with_a_right_second_order_vmap_gradient() -> None:
    """torch's batching rule for the native layer norm's backward is wrong for the input's
    gradient (pytorch/functorch#534): a MAML meta-gradient through vmap over tasks came out
    wrong. Under CompositeLayerNorm (what Policy.network_output runs a user network in) the
    values are F.layer_norm's and the vmapped meta-gradient equals a loop over tasks'."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=gen, dtype=D)
    w, b = torch.randn(4, generator=gen, dtype=D), torch.randn(4, generator=gen, dtype=D)
    module = nn.LayerNorm(4, dtype=D)
    for args in (((4,), w, b), ((4,), None, None), ((5, 4), None, None)):
        expected = F.layer_norm(x, *args)  # native, outside the mode
        with CompositeLayerNorm():
            torch.testing.assert_close(F.layer_norm(x, *args), expected)
    expected = module(x)
    with CompositeLayerNorm():
        torch.testing.assert_close(module(x), expected)
    weight = torch.randn(4, 2, generator=gen, dtype=D)

    def inner(theta: dict[str, Tensor], xi: Tensor) -> Tensor:
        return F.layer_norm(xi[..., :2] @ theta["W"].T, (4,), theta["w"]).sin().sum()

    def task(theta: dict[str, Tensor], xi: Tensor) -> Tensor:
        g = torch.func.grad(inner)(theta, xi)
        return inner({k: theta[k] - 0.1 * g[k] for k in theta}, xi)

    theta = {"W": weight.requires_grad_(), "w": w.clone().requires_grad_()}
    with CompositeLayerNorm():
        vmapped = torch.func.vmap(task, in_dims=(None, 0))(theta, x).sum()
        looped = sum(task(theta, x[i]) for i in range(3))
    for a, c in zip(
        torch.autograd.grad(vmapped, list(theta.values())),
        torch.autograd.grad(looped, list(theta.values())),
        strict=True,
    ):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
