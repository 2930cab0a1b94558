"""The shared inner loop: exact meta-gradients, the first-order flag, vmap over tasks."""

from collections.abc import Iterator

import pytest
import torch
from torch.func import functional_call, vmap

from metarl import adapt
from metarl.adaptation import inner_lrs


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    """These checks are about exactness: float64 throughout, restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _linear_task(gen: torch.Generator, n: int = 7, d: int = 3):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def _lsq(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x @ w - y) ** 2).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_linear_regression_meta_gradient_matches_closed_form(first_order: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    xs, ys = _linear_task(gen)
    xq, yq = _linear_task(gen)
    alpha = 0.3
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)

    adapted = adapt(
        {"w": w}, lambda p: _lsq(p["w"], xs, ys), steps=1, lr=alpha, first_order=first_order
    )["w"]
    (grad,) = torch.autograd.grad(_lsq(adapted, xq, yq), w)

    # loss_s(w) = w'A_s w - 2 b_s'w + c  =>  w' = (I - 2 alpha A_s) w + 2 alpha b_s
    a_s, b_s = xs.T @ xs / len(xs), xs.T @ ys / len(xs)
    a_q, b_q = xq.T @ xq / len(xq), xq.T @ yq / len(xq)
    jac = torch.eye(3) - 2 * alpha * a_s
    w_prime = jac @ w.detach() + 2 * alpha * b_s
    outer = 2 * (a_q @ w_prime - b_q)
    torch.testing.assert_close(adapted.detach(), w_prime, rtol=1e-12, atol=1e-12)
    second_order = jac.T @ outer
    if first_order:
        torch.testing.assert_close(grad, outer, rtol=1e-12, atol=1e-12)
        assert (grad - second_order).norm() > 1e-2 * second_order.norm()
    else:
        torch.testing.assert_close(grad, second_order, rtol=1e-12, atol=1e-12)


def _small_mlp():
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    ).double()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    return net, params


def test_second_order_meta_gradient_matches_finite_differences_on_mlp() -> None:
    net, params = _small_mlp()
    gen = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(10, 1, generator=gen), torch.randn(10, 1, generator=gen)
    ys, yq = torch.sin(xs), torch.sin(xq)

    def loss(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean()

    def meta_objective(p):
        return loss(adapt(p, lambda q: loss(q, xs, ys), steps=2, lr=0.1), xq, yq)

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(meta_objective(leaves), list(leaves.values()))
    analytic = torch.cat([g.flatten() for g in grads])

    flat = torch.cat([v.flatten() for v in params.values()])
    shapes = [(k, v.shape, v.numel()) for k, v in params.items()]

    def unflat(vec):
        out, i = {}, 0
        for k, shape, n in shapes:
            out[k] = vec[i : i + n].view(shape)
            i += n
        return out

    eps = 1e-6
    numeric = torch.empty_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = eps
            numeric[i] = (meta_objective(unflat(flat + e)) - meta_objective(unflat(flat - e))) / (
                2 * eps
            )
    rel = (analytic - numeric).norm() / numeric.norm()
    assert rel < 1e-6, rel

    first = torch.autograd.grad(
        loss(adapt(leaves, lambda q: loss(q, xs, ys), steps=2, lr=0.1, first_order=True), xq, yq),
        list(leaves.values()),
    )
    first_flat = torch.cat([g.flatten() for g in first])
    assert (first_flat - analytic).norm() / analytic.norm() > 1e-3


def test_vmapped_adaptation_equals_loop_over_tasks() -> None:
    net, params = _small_mlp()
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    gen = torch.Generator().manual_seed(2)
    xs, xq = torch.randn(5, 10, 1, generator=gen), torch.randn(5, 10, 1, generator=gen)
    ys, yq = torch.sin(3 * xs), torch.cos(xq)

    def loss(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean()

    def task(xs_, ys_, xq_, yq_):
        return loss(adapt(leaves, lambda q: loss(q, xs_, ys_), steps=2, lr=0.05), xq_, yq_)

    batched = vmap(task)(xs, ys, xq, yq)
    g_batched = torch.autograd.grad(batched.sum(), list(leaves.values()))

    looped = []
    for i in range(5):  # independent reference: plain autograd.grad with create_graph
        p = dict(leaves)
        for _ in range(2):
            g = torch.autograd.grad(loss(p, xs[i], ys[i]), list(p.values()), create_graph=True)
            p = {k: v - 0.05 * gk for (k, v), gk in zip(p.items(), g, strict=True)}
        looped.append(loss(p, xq[i], yq[i]))
    looped_t = torch.stack(looped)
    g_looped = torch.autograd.grad(looped_t.sum(), list(leaves.values()))
    torch.testing.assert_close(batched, looped_t, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_batched, g_looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adapt_does_not_modify_params_and_zero_steps_is_identity() -> None:
    _, params = _small_mlp()
    before = {k: v.clone() for k, v in params.items()}
    out = adapt(params, lambda p: sum((v**2).sum() for v in p.values()), steps=3, lr=0.1)
    for k in params:
        assert torch.equal(params[k], before[k])
        assert not torch.equal(out[k], before[k])
    same = adapt(params, lambda p: p["0.weight"].sum(), steps=0, lr=0.1)
    assert all(same[k] is params[k] for k in params)


def test_per_step_learning_rates_and_bad_input() -> None:
    w = torch.tensor([1.0])
    out = adapt({"w": w}, lambda p: (p["w"] ** 2).sum(), steps=2, lr=[0.25, 0.5])
    # w1 = w - 0.25 * 2w = 0.5; w2 = 0.5 - 0.5 * 2 * 0.5 = 0
    torch.testing.assert_close(out["w"], torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"2 learning rates .* for 3 steps"):
        inner_lrs([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="must be > 0"):
        inner_lrs(-0.1, 1)
