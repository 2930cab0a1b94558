"""The hand-derived MLP calculus (metarl.rl.mlp_accelerator): its passes against torch.func, and
its meta-KL gradients and Gauss-Newton products equal to the generic path's (float64), which
meta_trpo_step picks for the default MLP unless trpo.accelerator is off."""

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from test_maml_rl import (
    INNERS,
    D,
    categorical_meta_batch,
    make_meta_batch,
    objective,
    perturbed,
    relu_policy,
    small_policy,
    with_inner,
)

from metarl.config import InnerLoopConfig, TRPOConfig
from metarl.rl.maml_trpo import MetaBatch, meta_trpo_step
from metarl.rl.mlp_accelerator import MLPAccelerator, MLPCalculus, accelerate
from metarl.rl.policies import (
    GaussianHead,
    GaussianMLPPolicy,
    NetworkSpec,
    Params,
    Policy,
    PolicySpec,
)
from metarl.rl.trpo import flatten_params


def task_batched(pol: Policy, k: int, seed: int) -> Params:
    """``k`` different weight sets of ``pol`` stacked on a leading task axis (float64)."""
    base = pol.init_params(torch.Generator().manual_seed(seed), dtype=D)
    gen = torch.Generator().manual_seed(seed + 1)
    return {
        name: v + 0.3 * torch.randn((k, *v.shape), generator=gen, dtype=D)
        for name, v in base.items()
    }


def random_like(params: Params, seed: int) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=D) for k, v in params.items()}


def calculus(pol: Policy) -> MLPCalculus:
    assert isinstance(pol.network, nn.Sequential)
    return MLPCalculus(pol.network, pol.prefix)  # type: ignore[arg-type]


def body_params(params: Params) -> Params:
    return {k: v for k, v in params.items() if k.startswith("mlp.")}


def body_out(pol: Policy, obs: Tensor, params: Params) -> Tensor:
    return torch.func.vmap(pol.network_output)(params, obs)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_body_calculus_matches_torch_func(activation: str) -> None:
    pol = GaussianMLPPolicy(obs_dim=3, act_dim=2, hidden_sizes=(6, 5), activation=activation)
    calc = calculus(pol)
    params = body_params(task_batched(pol, 4, seed=0))
    gen = torch.Generator().manual_seed(9)
    obs = torch.randn(4, 7, 3, generator=gen, dtype=D)
    out_cot, out_cot_t = (torch.randn(4, 7, 2, generator=gen, dtype=D) for _ in range(2))
    tangent = random_like(params, seed=3)
    trace = calc.body_trace(params, obs)
    torch.testing.assert_close(trace.output, body_out(pol, obs, params))
    # backward pass against autograd's vjp
    vjp_fn = torch.func.vjp(lambda p: body_out(pol, obs, p), params)[1]
    cot = calc.body_vjp(params, trace, out_cot)
    for name, g in vjp_fn(out_cot)[0].items():
        torch.testing.assert_close(cot.grads[name], g)
    # forward mode against torch.func.jvp
    tan = calc.body_jvp(params, trace, tangent)
    expected_t = torch.func.jvp(lambda p: body_out(pol, obs, p), (params,), (tangent,))[1]
    torch.testing.assert_close(tan.output, expected_t)

    # R-operator: the tangent of the backward pass, by forward-over-reverse autodiff
    def grads_of(p: Params, c: Tensor) -> Params:
        grads: Params = torch.func.vjp(lambda q: body_out(pol, obs, q), p)[1](c)[0]
        return grads

    expected: Params = torch.func.jvp(grads_of, (params, out_cot), (tangent, out_cot_t))[1]
    got = calc.body_vjp_tangent(params, trace, cot, tangent, tan, out_cot_t)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g)
    assert float(expected["mlp.0.weight"].norm()) > 1e-3  # second-order terms reach layer 0


def test_low_rank_calculus_matches_general_one() -> None:
    pol = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(9, 8))
    calc = calculus(pol)
    assert calc.supports_low_rank()
    params = task_batched(pol, 3, seed=1)
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(3, 11, 2, generator=gen, dtype=D)
    out_cot, out_cot_t = (torch.randn(3, 11, 2, generator=gen, dtype=D) for _ in range(2))
    tangent = random_like(params, seed=4)
    trace = calc.body_trace(params, obs)
    cot = calc.body_vjp(params, trace, out_cot)
    jac = calc.output_jacobian(params, trace)
    tan = calc.body_jvp(params, trace, tangent)
    out_t, p = calc.low_rank_jvp(params, trace, jac, tangent)
    torch.testing.assert_close(out_t, tan.output)
    for name, g in calc.low_rank_vjp(params, trace, jac, out_cot).items():
        torch.testing.assert_close(g, cot.grads[name])
    moments = calc.relu_moments(params, trace, cot)
    got = calc.low_rank_vjp_tangent(params, trace, cot, moments, tangent, p, out_cot_t)
    expected = calc.body_vjp_tangent(params, trace, cot, tangent, tan, out_cot_t)
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g)


def test_supports_low_rank_only_for_small_two_layer_relu_bodies() -> None:
    def low_rank(**kw: object) -> bool:
        return calculus(GaussianMLPPolicy(**kw)).supports_low_rank()  # type: ignore[arg-type]

    assert low_rank(obs_dim=2, act_dim=2)
    assert not low_rank(obs_dim=2, act_dim=2, activation="tanh")
    assert not low_rank(obs_dim=2, act_dim=2, hidden_sizes=(8,))
    assert not low_rank(obs_dim=20, act_dim=6)  # half-cheetah


# ------------------------------------------- the accelerated product equals the generic one


def assert_products_equal(fast: Tensor, generic: Tensor, v: Tensor) -> None:
    """Equal to 1e-10 relative, with an absolute floor of 1024 float64 ulps of ``|v|`` times
    the product's scale (rounding of two routes through the same sums)."""
    atol = 1024 * torch.finfo(torch.float64).eps * float(generic.norm())
    diff = float((fast - generic).norm())
    assert diff <= 1e-10 * float(generic.norm()) + atol, (diff, float(generic.norm()))
    assert float(generic.norm()) > 1e-2 * float(v.norm())  # not trivially small


@pytest.fixture(scope="module")
def tanh64() -> tuple[Policy, Params, MetaBatch]:
    pol = small_policy()
    theta = pol.init_params(torch.Generator().manual_seed(0), dtype=D)
    return pol, theta, make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1))


@pytest.fixture(scope="module")
def relu64() -> tuple[Policy, Params, MetaBatch]:
    pol = relu_policy()
    theta = perturbed(pol.init_params(torch.Generator().manual_seed(0), dtype=D), 11)
    return pol, theta, make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1), seed=2)


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("which", ["tanh", "relu", "categorical"])
def test_accelerated_gauss_newton_equals_the_generic_product(
    tanh64: tuple[Policy, Params, MetaBatch],
    relu64: tuple[Policy, Params, MetaBatch],
    which: str,
    inner: InnerLoopConfig,
) -> None:
    """tanh: the general R-operator; relu (2-D in and out) and categorical (3-D in, 4 out, a
    head without weights): the low-rank row sums. On all valid episodes and on a share."""
    setups = {"tanh": tanh64, "relu": relu64}
    pol, theta, batch = setups[which] if which in setups else categorical_meta_batch()
    batch = with_inner(batch, inner)
    n = flatten_params(theta).numel()
    for e in (batch.valid.episodes_per_task, 2):
        obj = objective(pol, theta, batch.first_valid_episodes(e))
        fast = accelerate(pol, obj)
        assert isinstance(fast, MLPAccelerator)
        assert fast.low_rank == (which != "tanh")
        for seed in (5, 6):
            v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)
            assert_products_equal(fast.gauss_newton_hvp(v), obj.gauss_newton_hvp(v), v)


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("which", ["tanh", "relu", "categorical"])
def test_accelerated_kl_gradient_equals_the_generic_one(
    tanh64: tuple[Policy, Params, MetaBatch],
    relu64: tuple[Policy, Params, MetaBatch],
    which: str,
    inner: InnerLoopConfig,
) -> None:
    """What finite-difference products difference, at theta_old (where it is 0 up to
    rounding: compared with a floor of the meta-gradient's scale) and away from it."""
    setups = {"tanh": tanh64, "relu": relu64}
    pol, theta, batch = setups[which] if which in setups else categorical_meta_batch()
    batch = with_inner(batch, inner)
    for e in (batch.valid.episodes_per_task, 2):
        obj = objective(pol, theta, batch.first_valid_episodes(e))
        fast = accelerate(pol, obj)
        assert fast is not None
        scale = float(obj.loss_and_grad(obj.theta_old)[1].norm())
        for at in (obj.theta_old, perturbed(theta, 12)):
            generic = obj.kl_grad(at)
            atol = 1024 * torch.finfo(torch.float64).eps * scale
            diff = float((fast.kl_grad(at) - generic).norm())
            assert diff <= 1e-10 * float(generic.norm()) + atol, (diff, float(generic.norm()))
        assert float(generic.norm()) > 1e-3


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("which", ["tanh", "relu", "categorical"])
def test_accelerated_meta_gradient_equals_the_generic_one(
    tanh64: tuple[Policy, Params, MetaBatch],
    relu64: tuple[Policy, Params, MetaBatch],
    which: str,
    inner: InnerLoopConfig,
) -> None:
    """The meta-gradient at theta_old from the Gauss-Newton products' passes (the valid
    surrogate's gradient pulled back through the inner steps by the R-operator)."""
    setups = {"tanh": tanh64, "relu": relu64}
    pol, theta, batch = setups[which] if which in setups else categorical_meta_batch()
    obj = objective(pol, theta, with_inner(batch, inner))
    fast = accelerate(pol, obj)
    assert fast is not None
    value, grad = fast.loss_and_grad(obj.theta_old)
    expected_value, expected = obj.loss_and_grad(obj.theta_old)
    # about 0 at theta_old (normalised advantages): to rounding of terms of size 1
    assert abs(float(value - expected_value)) <= 1e-12
    assert_products_equal(grad, expected, expected)
    with pytest.raises(ValueError, match="only at theta_old"):
        fast.loss_and_grad(perturbed(theta, 3))


@pytest.mark.parametrize(
    ("hvp", "subsample"),
    [("finite_difference", 1.0), ("gauss_newton", 1.0), ("gauss_newton", 0.5)],
)
def test_meta_trpo_step_picks_the_accelerator_for_the_mlp_only(
    relu64: tuple[Policy, Params, MetaBatch],
    monkeypatch: pytest.MonkeyPatch,
    hvp: str,
    subsample: float,
) -> None:
    """Finite differences difference its KL gradients; Gauss-Newton products are its, and so
    is the meta-gradient when the products take all valid episodes (its passes at theta_old
    are those of the products then)."""
    pol, theta, batch = relu64
    calls: dict[str, int] = {}
    methods = ["kl_grad"] if hvp == "finite_difference" else ["gauss_newton_hvp", "loss_and_grad"]
    for method in methods:
        real = getattr(MLPAccelerator, method)

        def counted(self: MLPAccelerator, x: Any, real: Any = real, method: str = method) -> Any:
            calls[method] = calls.get(method, 0) + 1
            return real(self, x)

        monkeypatch.setattr(MLPAccelerator, method, counted)
    steps = {}
    for accelerator in (True, False):
        config = TRPOConfig(hvp=hvp, accelerator=accelerator, hvp_subsample=subsample)  # type: ignore[arg-type]
        new, stats = meta_trpo_step(pol, theta, batch, config)
        assert stats.step_accepted
        steps[accelerator] = flatten_params(new)
        expected = set(methods) if accelerator else set()
        if accelerator and subsample < 1.0:
            expected.discard("loss_and_grad")  # products on a share: their passes differ
        assert set(calls) == expected, calls
        calls.clear()
    # the products agree to 1e-10; ten CG iterations at damping 1e-5 amplify that to ~1e-6
    torch.testing.assert_close(steps[True], steps[False], rtol=1e-5, atol=1e-8)
    # a network of another class is not the MLP the calculus knows
    spec = PolicySpec(
        obs_dim=2,
        head=GaussianHead(act_dim=2),
        network=NetworkSpec(factory="test_mlp_accelerator:plain_sequential"),
    )
    other = Policy(spec)
    assert accelerate(other, objective(pol, theta, batch)) is None


def plain_sequential(obs_dim: int, out_dim: int) -> nn.Module:
    """An MLP-shaped network of another class: the generic path serves it."""
    return nn.Sequential(nn.Linear(obs_dim, 8), nn.ReLU(), nn.Linear(8, out_dim))
