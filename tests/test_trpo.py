"""TRPO pieces: conjugate gradient, Hessian-vector products, line search, a full step."""

import pytest
import torch
from torch import Tensor

from metarl.config import TRPOConfig
from metarl.rl.policies import GaussianMLPPolicy, Params
from metarl.rl.trpo import (
    HVP_METHODS,
    Derivatives,
    _cg,
    backtracking_line_search,
    conjugate_gradient,
    flatten_params,
    hvp_exact,
    hvp_finite_difference,
    trpo_step,
    unflatten_params,
)

D = torch.float64


def test_conjugate_gradient_matches_linalg_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(10, 10, generator=gen, dtype=D)
    spd = a @ a.T + 0.5 * torch.eye(10, dtype=D)
    b = torch.randn(10, generator=gen, dtype=D)
    x = conjugate_gradient(lambda v: spd @ v, b, iters=10)
    expected = torch.linalg.solve(spd, b)
    assert (x - expected).norm() / expected.norm() < 1e-6
    # fewer iterations than the dimension leave a visible error: the test can fail
    x3 = conjugate_gradient(lambda v: spd @ v, b, iters=3)
    assert (x3 - expected).norm() / expected.norm() > 1e-3


def test_conjugate_gradient_stops_at_curvature_that_is_not_positive() -> None:
    """An estimated curvature that is not positive definite (or a product that overflows)
    ends CG at the last iterate instead of stepping with a NaN or a huge alpha."""
    diag = torch.tensor([2.0, 1.0, -1.0, 3.0], dtype=D)
    b = torch.ones(4, dtype=D)
    calls: list[Tensor] = []

    def indefinite(v: Tensor) -> Tensor:
        calls.append(v)
        return diag * v

    x, r, products = _cg(indefinite, b, 10, 1e-10)
    assert torch.isfinite(x).all() and products == len(calls) < 10
    assert float(calls[-1] @ (diag * calls[-1])) <= 0.0  # the product that stopped it
    torch.testing.assert_close(r, b - diag * x)  # x is a real iterate, residual consistent
    assert float(x @ b) > 0.0  # the iterates before it made progress along b

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=gen, dtype=D)
    spd = a @ a.T + 0.5 * torch.eye(6, dtype=D)
    scales = iter([1.0, 1.0, torch.inf])  # the third product overflows

    def late_overflow(v: Tensor) -> Tensor:
        return next(scales) * (spd @ v)

    x, r, products = _cg(late_overflow, torch.ones(6, dtype=D), 10, 1e-10)
    two = conjugate_gradient(lambda v: spd @ v, torch.ones(6, dtype=D), iters=2)
    assert products == 3 and torch.equal(x, two)  # the iterate of the two good products
    x = conjugate_gradient(lambda v: v * torch.inf, torch.ones(3, dtype=D), iters=10)
    assert torch.equal(x, torch.zeros(3, dtype=D))


def test_flatten_unflatten_roundtrip() -> None:
    params = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([7.0])}
    flat = flatten_params(params)
    assert torch.equal(flat, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0]))
    back = unflatten_params(flat, params)
    assert all(torch.equal(back[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="entries"):
        unflatten_params(torch.zeros(9), params)


def quartic(p: Params) -> Tensor:
    """A smooth non-quadratic function of two weight tensors."""
    w, b = p["w"], p["b"]
    return (w**4).sum() + (w.sum() * b).pow(2).sum() + torch.sin(b).sum()


def test_fd_hvp_matches_exact_on_smooth_function() -> None:
    gen = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(3, 2, generator=gen, dtype=D),
        "b": torch.randn(2, generator=gen, dtype=D),
    }
    v = torch.randn(8, generator=gen, dtype=D)

    def grad_fn(p: Params) -> Tensor:
        leaves = {k: x.detach().requires_grad_() for k, x in p.items()}
        return flatten_params(
            dict(
                zip(
                    leaves, torch.autograd.grad(quartic(leaves), list(leaves.values())), strict=True
                )
            )
        )

    exact = hvp_exact(quartic, params, v, damping=0.1)
    fd = hvp_finite_difference(grad_fn, params, v, base_eps=1e-5, damping=0.1)
    hess = torch.autograd.functional.hessian(
        lambda f: quartic(unflatten_params(f, params)), flatten_params(params)
    )
    torch.testing.assert_close(exact, hess @ v + 0.1 * v)
    assert (fd - exact).norm() / exact.norm() < 1e-7


def quadratic_problem() -> tuple[Params, Tensor, Tensor, Tensor]:
    """params, linear loss coefficients c, KL metric M (SPD) and the point theta0."""
    gen = torch.Generator().manual_seed(1)
    theta0 = torch.randn(5, generator=gen, dtype=D)
    a = torch.randn(5, 5, generator=gen, dtype=D)
    metric = a @ a.T + torch.eye(5, dtype=D)
    c = torch.randn(5, generator=gen, dtype=D)
    return {"x": theta0.clone()}, c, metric, theta0


def test_line_search_accepts_within_max_kl_with_lower_loss() -> None:
    params, c, metric, theta0 = quadratic_problem()

    def loss_kl(p: Params) -> tuple[Tensor, Tensor]:
        d = p["x"] - theta0
        return c @ p["x"], 0.5 * d @ metric @ d

    # a step in the descent direction that is 4x too long for max_kl: backtracking must shrink it
    direction = torch.linalg.solve(metric, c)
    step = direction * (2 * 0.01 / (direction @ metric @ direction)).sqrt() * 4.0
    res = backtracking_line_search(
        params, step, loss_kl, loss_before=float(c @ theta0), max_kl=0.01
    )
    assert res.accepted and res.backtracks > 0
    loss, kl = loss_kl(res.params)
    assert float(kl) <= 0.01 and float(loss) < float(c @ theta0)
    assert res.kl == pytest.approx(float(kl)) and res.fraction == pytest.approx(0.8**res.backtracks)


def test_line_search_rejects_rising_loss_and_large_kl() -> None:
    params, c, metric, theta0 = quadratic_problem()
    step = torch.linalg.solve(metric, c) * 1e-3
    rising = backtracking_line_search(
        params,
        step,
        lambda p: (c @ p["x"] + 1.0, torch.zeros((), dtype=D)),
        loss_before=float(c @ theta0),
        max_kl=0.01,
    )
    large_kl = backtracking_line_search(
        params,
        step,
        lambda p: (c @ p["x"] - 1.0, torch.ones((), dtype=D)),
        loss_before=float(c @ theta0),
        max_kl=0.01,
    )
    for res in (rising, large_kl):
        assert not res.accepted and res.params is params and res.backtracks == 15
        assert torch.equal(res.params["x"], theta0)


def test_trpo_step_rejects_adversarial_steps_and_keeps_params() -> None:
    params, c, metric, theta0 = quadratic_problem()

    def loss_fn(p: Params) -> Tensor:
        return c @ p["x"]

    def kl_fn(p: Params) -> Tensor:
        d = p["x"] - theta0
        return 0.5 * d @ metric @ d

    def loss_rises(p: Params) -> tuple[Tensor, Tensor]:  # the loss goes up along any step
        return loss_fn(p) + (p["x"] - theta0).norm() * 1e3, kl_fn(p)

    def kl_too_large(p: Params) -> tuple[Tensor, Tensor]:  # the KL is huge for every step
        return loss_fn(p), kl_fn(p) * 1e8

    for hvp in ("finite_difference", "exact"):
        for adversary in (loss_rises, kl_too_large):
            config = TRPOConfig(hvp=hvp)  # type: ignore[arg-type]
            new, stats = trpo_step(params, loss_fn, kl_fn, config, loss_kl_fn=adversary)
            assert not stats.step_accepted and stats.backtracks == 15
            assert torch.equal(new["x"], theta0) and stats.loss_after == stats.loss_before
            assert stats.step_norm == 0.0 and stats.kl_after == 0.0


def test_trpo_step_quadratic_kl_accepts_full_step_at_boundary() -> None:
    params, c, metric, theta0 = quadratic_problem()
    new, stats = trpo_step(
        params,
        lambda p: c @ p["x"],
        lambda p: 0.5 * (p["x"] - theta0) @ metric @ (p["x"] - theta0),
        TRPOConfig(hvp="exact", damping=0.0),
    )
    # the KL model is exact: the full step lands on the trust-region boundary, along -M^-1 c
    assert stats.step_accepted and stats.backtracks == 0
    assert stats.kl_after == pytest.approx(0.01, rel=1e-6)
    direction = -torch.linalg.solve(metric, c)
    cos = torch.nn.functional.cosine_similarity(new["x"] - theta0, direction, dim=0)
    assert float(cos) > 1 - 1e-9


@pytest.mark.parametrize("hvp", ["finite_difference", "exact"])
def test_trpo_step_on_policy_surrogate_decreases_loss_within_max_kl(hvp: str) -> None:
    pol = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(16, 16), activation="tanh")
    gen = torch.Generator().manual_seed(0)
    theta = pol.init_params(gen)
    obs = torch.randn(256, 2, generator=gen)
    acts, old_lp = pol.sample(theta, obs, gen)
    adv = -(acts - obs).pow(2).sum(-1)  # prefer actions near the observation
    adv = (adv - adv.mean()) / adv.std()
    old = pol.detached_stats(theta, obs)

    def loss_fn(p: Params) -> Tensor:
        return -(torch.exp(pol.log_prob(p, obs, acts) - old_lp) * adv).mean()

    def kl_fn(p: Params) -> Tensor:
        return pol.kl(old, p, obs).mean()

    new, stats = trpo_step(theta, loss_fn, kl_fn, TRPOConfig(max_kl=0.01, hvp=hvp))  # type: ignore[arg-type]
    assert stats.step_accepted
    with torch.no_grad():
        assert float(loss_fn(new)) < float(loss_fn(theta)) - 1e-3
        kl = float(kl_fn(new))
    assert 0.0 < kl <= 0.01 and kl == pytest.approx(stats.kl_after)
    assert stats.loss_after == pytest.approx(float(loss_fn(new).detach()))
    assert all(not v.requires_grad for v in new.values())


def test_trpo_step_bad_settings() -> None:
    params, c, _, _ = quadratic_problem()

    def step(**settings: object) -> None:
        config = TRPOConfig(**settings)  # type: ignore[arg-type]
        trpo_step(params, lambda p: c @ p["x"], lambda p: c @ p["x"], config)

    with pytest.raises(ValueError, match="max_kl"):
        step(max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_ratio"):
        step(backtrack_ratio=1.0)
    with pytest.raises(ValueError, match="hvp must be one of finite_difference, exact, gauss"):
        step(hvp="bogus")
    with pytest.raises(ValueError, match=r"gauss_newton.*needs a Gauss-Newton product"):
        step(hvp="gauss_newton")


def test_trpo_step_uses_the_given_derivatives() -> None:
    params, c, metric, theta0 = quadratic_problem()
    calls: dict[str, int] = {"loss_grad": 0, "kl_grad": 0, "gauss_newton": 0}

    def kl_fn(p: Params) -> Tensor:
        return 0.5 * (p["x"] - theta0) @ metric @ (p["x"] - theta0)

    def loss_grad(p: Params) -> tuple[Tensor, Tensor]:
        calls["loss_grad"] += 1
        return c @ p["x"], c

    def kl_grad(p: Params) -> Tensor:
        calls["kl_grad"] += 1
        return metric @ (p["x"] - theta0)

    def gauss_newton(v: Tensor) -> Tensor:
        calls["gauss_newton"] += 1
        return metric @ v

    d = Derivatives(loss_grad=loss_grad, kl_grad=kl_grad, gauss_newton=gauss_newton)
    never = lambda p: torch.tensor(float("nan"), dtype=D)  # noqa: E731 (autograd must not run)
    results = {}
    for hvp in ("finite_difference", "gauss_newton"):
        new, stats = trpo_step(
            params, never, kl_fn, TRPOConfig(hvp=hvp, damping=0.0), derivatives=d,  # type: ignore[arg-type]
            loss_kl_fn=lambda p: (c @ p["x"], kl_fn(p)),
        )  # fmt: skip
        assert stats.step_accepted and stats.kl_after == pytest.approx(0.01, rel=1e-6)
        results[hvp] = new["x"]
    assert calls["loss_grad"] == 2 and calls["gauss_newton"] >= 1 and calls["kl_grad"] >= 2
    # the KL model is exactly quadratic: both products are exact, so are the steps
    direction = -torch.linalg.solve(metric, c)
    for x in results.values():
        cos = torch.nn.functional.cosine_similarity(x - theta0, direction, dim=0)
        assert float(cos) > 1 - 1e-9


def test_hvp_methods_are_the_configs_choices() -> None:
    import typing

    from metarl.config import TRPOConfig

    assert set(typing.get_args(typing.get_type_hints(TRPOConfig)["hvp"])) == set(HVP_METHODS)


def test_trpo_step_solves_with_the_curvature_kl_and_checks_the_real_kl() -> None:
    """``curvature_kl_fn`` (e.g. a subsample's KL) shapes the direction, B^-1 g; the line
    search still holds the real KL (A here) to max_kl."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=D)
    a = m @ m.T + torch.eye(6, dtype=D)
    b = torch.diag(torch.linspace(1.0, 5.0, 6, dtype=D))
    g = torch.randn(6, generator=gen, dtype=D)
    theta = {"x": torch.zeros(6, dtype=D)}
    max_kl = 0.01
    new, stats = trpo_step(
        theta,
        lambda p: g @ p["x"],
        lambda p: 0.5 * p["x"] @ a @ p["x"],
        TRPOConfig(max_kl=max_kl, damping=0.0, cg_iters=6, hvp="exact"),
        curvature_kl_fn=lambda p: 0.5 * p["x"] @ b @ p["x"],
    )  # fmt: skip
    step = new["x"]
    direction = -torch.linalg.solve(b, g)
    cos = float(step @ direction / (step.norm() * direction.norm()))
    assert stats.step_accepted and cos > 1 - 1e-9
    assert float(0.5 * step @ a @ step) <= max_kl * (1 + 1e-9)
    wrong = -torch.linalg.solve(a, g)  # the A-direction differs: the test can fail
    assert float(wrong @ direction / (wrong.norm() * direction.norm())) < 0.99


def test_step_length_comes_from_the_full_kl_when_the_curvature_is_a_subsample() -> None:
    """A curvature KL 4x the real one (as a subsample's can be): the direction is its solve,
    but the step is rescaled by sqrt(max_kl / KL(full step)) = 2 so that the real KL of the
    step is max_kl (a quadratic KL: exactly, up to rounding and one shrink)."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    m = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=D)
    params = {"w": torch.zeros(3, dtype=D)}

    def loss_fn(p: Params) -> Tensor:
        return -(a @ p["w"])

    def kl_fn(p: Params) -> Tensor:
        return 0.5 * p["w"] @ m @ p["w"]

    def sub_kl_fn(p: Params) -> Tensor:
        return 2.0 * p["w"] @ m @ p["w"]  # 4x the curvature of kl_fn

    config = TRPOConfig(max_kl=0.01, hvp="exact", damping=0.0)
    plain, plain_stats = trpo_step(params, loss_fn, kl_fn, config)
    sub, stats = trpo_step(params, loss_fn, kl_fn, config, curvature_kl_fn=sub_kl_fn)
    assert plain_stats.step_rescale == 1.0 and plain_stats.kl_after == pytest.approx(0.01)
    assert stats.step_rescale == pytest.approx(2.0, rel=1e-6)  # (beta has a 1e-8 guard)
    assert stats.step_accepted and 0.01 * 0.8**2 - 1e-12 <= stats.kl_after <= 0.01
    unscaled_kl = 0.01 / 4  # what the subsample's own step length would have given
    assert stats.kl_after > 2 * unscaled_kl
    torch.testing.assert_close(sub["w"] / sub["w"].norm(), plain["w"] / plain["w"].norm())
