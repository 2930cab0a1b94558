"""MAML-RL objectives: VPG loss, vmap vs loop, meta-gradients vs finite differences,
first-order flag, HVPs of the meta-KL, and a full meta TRPO step.

The data is a small synthetic 2D point-mass navigation meta-batch sampled from the policy with
a fixed generator: train episodes with theta, valid episodes with the adapted theta_i.
"""

import dataclasses

import pytest
import torch
from torch import Tensor

from metarl.config import InnerLoopConfig, TRPOConfig
from metarl.rl.episodes import EpisodeBatch, split_tasks
from metarl.rl.losses import (
    compute_advantages,
    normalize_advantages,
    surrogate_loss,
    task_rows,
    vpg_loss,
)
from metarl.rl.maml_trpo import (
    MetaBatch,
    MetaObjective,
    adapt_meta_batch,
    adapt_policy,
    adapt_tasks,
    adapted_stats,
    curvature_episodes,
    meta_kl,
    meta_surrogate,
    meta_surrogate_and_kl,
    meta_trpo_step,
)
from metarl.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Params, Policy
from metarl.rl.trpo import (
    flat_grad,
    flatten_params,
    hvp_exact,
    hvp_finite_difference,
    unflatten_params,
)

D = torch.float64


def rollout(
    policy: Policy,
    params: Params,
    goals: Tensor,
    per_task: int,
    horizon: int,
    gen: torch.Generator,
    *,
    task_params: bool = False,
    lengths: Tensor | None = None,
) -> EpisodeBatch:
    """Point-mass episodes: obs = position, position += clip(action, +-0.1), reward = -|pos - goal|.
    ``lengths`` cut episodes short (those count as terminated); the others are truncated at T."""
    k, n = goals.shape[0], goals.shape[0] * per_task
    pos = torch.zeros(n, 2, dtype=goals.dtype)
    goal = goals.repeat_interleave(per_task, dim=0)
    obs, acts, rews, lps = [], [], [], []
    for _ in range(horizon):
        if task_params:
            a, lp = policy.sample_per_task(params, pos.view(k, per_task, 2), gen)
            a, lp = a.reshape(n, 2), lp.reshape(n)
        else:
            a, lp = policy.sample(params, pos, gen)
        obs.append(pos)
        pos = pos + a.clamp(-0.1, 0.1)
        rews.append(-(pos - goal).norm(dim=-1))
        acts.append(a)
        lps.append(lp)
    lengths = torch.full((n,), horizon) if lengths is None else lengths
    mask = (torch.arange(horizon).unsqueeze(1) < lengths).to(goals.dtype)
    all_obs = torch.stack([*obs, pos])
    return EpisodeBatch(
        observations=all_obs[:-1] * mask.unsqueeze(-1),
        actions=torch.stack(acts) * mask.unsqueeze(-1),
        rewards=torch.stack(rews) * mask,
        mask=mask,
        lengths=lengths,
        terminated=lengths < horizon,
        truncated=lengths == horizon,
        last_observations=all_obs[lengths, torch.arange(n)],
        log_probs=torch.stack(lps) * mask,
        num_tasks=k,
        episodes_per_task=per_task,
    )


def small_policy() -> Policy:
    return GaussianMLPPolicy(
        obs_dim=2, act_dim=2, hidden_sizes=(8, 8), activation="tanh", init_log_std=-0.5
    )


def make_meta_batch(
    policy: Policy, theta: Params, inner: InnerLoopConfig, seed: int = 0, num_tasks: int = 3
) -> MetaBatch:
    gen = torch.Generator().manual_seed(seed)
    dtype = theta["log_std"].dtype
    goals = torch.rand(num_tasks, 2, generator=gen, dtype=dtype) - 0.5
    lengths = torch.randint(4, 11, (num_tasks * 4,), generator=gen)
    train = rollout(policy, theta, goals, 4, 10, gen, lengths=lengths)
    train_adv = compute_advantages(train, gamma=0.99)
    adapted = adapt_tasks(policy, theta, train, train_adv, inner)
    valid = rollout(policy, adapted, goals, 4, 10, gen, task_params=True, lengths=lengths.flip(0))
    return MetaBatch(train, train_adv, valid, compute_advantages(valid, gamma=0.99), inner)


def perturbed(params: Params, seed: int, scale: float = 0.05) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()
    }


@pytest.fixture(scope="module")
def setup64() -> tuple[Policy, Params, MetaBatch]:
    pol = small_policy()
    theta = pol.init_params(torch.Generator().manual_seed(0), dtype=D)
    return pol, theta, make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1))


def with_inner(batch: MetaBatch, inner: InnerLoopConfig) -> MetaBatch:
    return MetaBatch(
        batch.train, batch.train_advantages, batch.valid, batch.valid_advantages, inner
    )


# ---------------------------------------------------------------- losses and advantages


def test_vpg_and_surrogate_losses_by_loop(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = setup64
    ep, adv = batch.valid.task(1), batch.valid_advantages[:, 4:8]
    p = perturbed(theta, 1)
    total_pg, total_sur, count = 0.0, 0.0, 0
    for n in range(4):
        for t in range(int(ep.lengths[n])):
            lp = pol.log_prob(p, ep.observations[t, n], ep.actions[t, n])
            total_pg += float(lp * adv[t, n])
            total_sur += float(torch.exp(lp - ep.log_probs[t, n]) * adv[t, n])
            count += 1
    assert float(vpg_loss(pol, p, ep, adv)) == pytest.approx(-total_pg / count, rel=1e-12)
    assert float(surrogate_loss(pol, p, ep, adv)) == pytest.approx(-total_sur / count, rel=1e-12)
    # at the sampling weights the importance ratio is 1 on the valid episodes
    adapted = adapt_tasks(pol, theta, batch.train, batch.train_advantages, batch.inner)
    a1 = {k: v[1] for k, v in adapted.items()}
    ratio_one = -(adv * ep.mask).sum() / ep.mask.sum()
    torch.testing.assert_close(surrogate_loss(pol, a1, ep, adv), ratio_one)


def test_normalize_advantages_per_task_on_masked_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 3, 1, 4, 5])
    mask = (torch.arange(5).unsqueeze(1) < lengths).to(D)
    adv = (
        torch.randn(5, 6, generator=gen, dtype=D) * 3 + torch.tensor([0.0, 0, 0, 9, 9, 9], dtype=D)
    ) * mask
    out = normalize_advantages(adv, mask, num_tasks=2)
    for cols in (slice(0, 3), slice(3, 6)):
        vals = out[:, cols][mask[:, cols] > 0]
        assert float(vals.mean()) == pytest.approx(0.0, abs=1e-12)
        assert float(vals.std(unbiased=False)) == pytest.approx(1.0, rel=1e-6)
    assert bool((out[mask == 0] == 0).all())


# ---------------------------------------------------------------- vmap against a loop over tasks


def loop_objectives(
    pol: Policy, params: Params, batch: MetaBatch, theta_old: Params
) -> tuple[Tensor, Tensor]:
    """Task by task on the ``[T, E]`` layout: the adapted surrogate and the KL from the
    policies adapted from ``theta_old``."""
    e, inner = batch.train.episodes_per_task, batch.inner
    losses, kls = [], []
    for i in range(batch.num_tasks):
        cols = slice(i * e, (i + 1) * e)

        def adapted_from(theta: Params, cols: slice = cols, i: int = i) -> Params:
            return adapt_policy(
                pol, theta, batch.train.task(i), batch.train_advantages[:, cols],
                steps=inner.steps, lr=inner.lr, first_order=inner.first_order,
            )  # fmt: skip

        adapted = adapted_from(params)
        valid = batch.valid.task(i)
        losses.append(surrogate_loss(pol, adapted, valid, batch.valid_advantages[:, cols]))
        old_i = pol.detached_stats(adapted_from(theta_old), valid.observations)
        kl = pol.kl(old_i, adapted, valid.observations)
        kls.append((kl * valid.mask).sum() / valid.mask.sum())
    return torch.stack(losses).mean(), torch.stack(kls).mean()


@pytest.mark.parametrize("steps", [1, 2])
def test_vmapped_objectives_equal_loop_over_tasks(
    setup64: tuple[Policy, Params, MetaBatch], steps: int
) -> None:
    pol, theta, batch = setup64
    batch = with_inner(batch, InnerLoopConfig(steps=steps, lr=0.1))
    old = adapted_stats(pol, theta, batch)
    p = perturbed(theta, 2)
    loss_loop, kl_loop = loop_objectives(pol, p, batch, theta)
    torch.testing.assert_close(meta_surrogate(pol, p, batch), loss_loop)
    torch.testing.assert_close(meta_kl(pol, p, batch, old), kl_loop)
    both = meta_surrogate_and_kl(pol, p, batch, old)
    torch.testing.assert_close(both[0], loss_loop)
    torch.testing.assert_close(both[1], kl_loop)
    assert float(kl_loop) > 1e-4  # not trivially zero
    # and the meta-gradient through vmap equals the loop's
    g_vmap = flat_grad(lambda q: meta_surrogate(pol, q, batch), p)[1]
    g_loop = flat_grad(lambda q: loop_objectives(pol, q, batch, theta)[0], p)[1]
    torch.testing.assert_close(g_vmap, g_loop)


def more_padding(batch: EpisodeBatch, steps: int, columns: int) -> EpisodeBatch:
    """``batch`` with ``steps`` more padded time steps and ``columns`` more empty episodes
    per task (the same real steps)."""
    k, e = batch.num_tasks, batch.episodes_per_task

    def per_step(x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], k, e, *x.shape[2:])
        x = torch.cat([x, x.new_zeros(x.shape[0], k, columns, *x.shape[3:])], dim=2)
        x = x.reshape(x.shape[0], k * (e + columns), *x.shape[3:])
        return torch.cat([x, x.new_zeros(steps, *x.shape[1:])])

    def per_episode(x: Tensor) -> Tensor:
        x = x.reshape(k, e, *x.shape[1:])
        x = torch.cat([x, x.new_zeros(k, columns, *x.shape[2:])], dim=1)
        return x.reshape(k * (e + columns), *x.shape[2:])

    return EpisodeBatch(
        observations=per_step(batch.observations), actions=per_step(batch.actions),
        rewards=per_step(batch.rewards), mask=per_step(batch.mask),
        lengths=per_episode(batch.lengths), terminated=per_episode(batch.terminated),
        truncated=per_episode(batch.truncated),
        last_observations=per_episode(batch.last_observations),
        log_probs=per_step(batch.log_probs), num_tasks=k, episodes_per_task=e + columns,
    )  # fmt: skip


def test_task_rows_hold_each_tasks_real_steps_in_order(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    _, _, batch = setup64
    ep, adv = batch.valid, batch.valid_advantages
    rows = task_rows(ep, adv)
    real = split_tasks(ep.mask, ep.num_tasks) > 0  # [K, T, E]
    counts = real.sum(dim=(1, 2))
    assert len(set(counts.tolist())) > 1  # tasks with unequal real steps
    assert rows.mask.shape == (ep.num_tasks, int(counts.max()))
    for k in range(ep.num_tasks):
        n = int(counts[k])
        for got, full in (
            (rows.observations, ep.observations), (rows.actions, ep.actions),
            (rows.log_probs, ep.log_probs), (rows.advantages, adv),
        ):  # fmt: skip
            assert torch.equal(got[k, :n], split_tasks(full, ep.num_tasks)[k][real[k]])
        assert bool((rows.mask[k, :n] == 1).all()) and bool((rows.mask[k, n:] == 0).all())


def test_padding_changes_neither_rows_nor_objectives(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = setup64
    train = more_padding(batch.train, 3, 2)
    valid = more_padding(batch.valid, 5, 1)
    train_adv = compute_advantages(train, gamma=0.99)
    valid_adv = compute_advantages(valid, gamma=0.99)
    torch.testing.assert_close(
        task_rows(train, train_adv).advantages, batch.train_rows().advantages
    )  # the advantages ignore padding too (up to rounding)
    padded = MetaBatch(train, train_adv, valid, valid_adv, batch.inner)
    for a, b in zip(padded.valid_rows()[:4], batch.valid_rows()[:4], strict=True):
        assert torch.equal(a, b)  # the same rows: the same cost
    p = perturbed(theta, 3)
    old = adapted_stats(pol, theta, batch)
    torch.testing.assert_close(meta_surrogate(pol, p, padded), meta_surrogate(pol, p, batch))
    torch.testing.assert_close(meta_kl(pol, p, padded, old), meta_kl(pol, p, batch, old))


def test_meta_kl_zero_at_sampling_params(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = setup64
    old = adapted_stats(pol, theta, batch)
    assert abs(float(meta_kl(pol, theta, batch, old))) < 1e-14
    assert float(meta_kl(pol, perturbed(theta, 3), batch, old)) > 1e-4


# ---------------------------------------------------------------- meta-gradients


def central_fd_grad(fn: object, params: Params, h: float = 1e-6) -> Tensor:
    flat = flatten_params(params)
    out = torch.zeros_like(flat)
    with torch.no_grad():
        for j in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[j] = h
            plus = fn(unflatten_params(flat + e, params))  # type: ignore[operator]
            minus = fn(unflatten_params(flat - e, params))  # type: ignore[operator]
            out[j] = (plus - minus) / (2 * h)
    return out


def test_second_order_meta_gradient_matches_finite_differences(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = setup64
    p = perturbed(theta, 4)
    grad = flat_grad(lambda q: meta_surrogate(pol, q, batch), p)[1]
    fd = central_fd_grad(lambda q: meta_surrogate(pol, q, batch), p)
    assert float((grad - fd).norm() / fd.norm()) < 1e-6


def test_first_order_flag(setup64: tuple[Policy, Params, MetaBatch]) -> None:
    pol, theta, batch = setup64
    p = perturbed(theta, 5)
    second = flat_grad(lambda q: meta_surrogate(pol, q, batch), p)[1]
    fo_batch = with_inner(batch, InnerLoopConfig(lr=0.1, first_order=True))
    first = flat_grad(lambda q: meta_surrogate(pol, q, fo_batch), p)[1]
    # hand-built FOMAML: grad of the valid surrogate w.r.t. theta_i at theta_i, summed over tasks
    adapted = adapt_tasks(pol, p, batch.train, batch.train_advantages, batch.inner)
    e, k = batch.valid.episodes_per_task, batch.num_tasks
    manual = torch.zeros_like(first)
    for i in range(k):
        a_i = {name: v[i] for name, v in adapted.items()}
        adv = batch.valid_advantages[:, i * e : (i + 1) * e]
        manual += flat_grad(lambda q: surrogate_loss(pol, q, batch.valid.task(i), adv), a_i)[1] / k  # noqa: B023
    torch.testing.assert_close(first, manual)
    assert float((second - first).norm() / second.norm()) > 0.05
    # the second-order one is the true gradient: finite differences side with it
    fd = central_fd_grad(lambda q: meta_surrogate(pol, q, batch), p)
    assert float((first - fd).norm() / fd.norm()) > 0.05


# ---------------------------------------------- Hessian-vector products of the meta-KL


def meta_kl_hvps(
    pol: Policy, theta: Params, at: Params, batch: MetaBatch, v: Tensor
) -> tuple[Tensor, Tensor]:
    old = adapted_stats(pol, theta, batch)

    def kl_fn(q: Params) -> Tensor:
        return meta_kl(pol, q, batch, old)

    fd = hvp_finite_difference(lambda q: flat_grad(kl_fn, q)[1], at, v, base_eps=1e-5, damping=1e-3)
    return fd, hvp_exact(kl_fn, at, v, damping=1e-3)


def test_fd_hvp_matches_exact_on_meta_kl_float64(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = setup64
    v = torch.randn(
        flatten_params(theta).numel(), generator=torch.Generator().manual_seed(7), dtype=D
    )
    for at in (theta, perturbed(theta, 6)):
        fd, exact = meta_kl_hvps(pol, theta, at, batch, v)
        assert float((fd - exact).norm() / exact.norm()) < 1e-6
        assert float((exact - 1e-3 * v).norm()) > 1e-2  # the Hessian part is not negligible


def test_fd_hvp_matches_exact_on_meta_kl_float32() -> None:
    pol = small_policy()
    theta = pol.init_params(torch.Generator().manual_seed(0))
    batch = make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1), seed=1)
    # the vector CG multiplies first: the meta-gradient (its scale matters for float32 FD)
    v = flat_grad(lambda q: meta_surrogate(pol, q, batch), theta)[1]
    for at in (theta, perturbed(theta, 6)):
        fd, exact = meta_kl_hvps(pol, theta, at, batch, v)
        assert float(torch.nn.functional.cosine_similarity(fd, exact, dim=0)) > 0.999


# ---------------------------------------------------------------- the generic derivatives


def relu_policy() -> Policy:
    """The paper's architecture in small: 2-D observations and actions, two ReLU layers."""
    return GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(8, 8), init_log_std=-0.5)


@pytest.fixture(scope="module")
def relu64() -> tuple[Policy, Params, MetaBatch]:
    pol = relu_policy()
    theta = perturbed(pol.init_params(torch.Generator().manual_seed(0), dtype=D), 11)
    return pol, theta, make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1), seed=2)


def objective(pol: Policy, theta: Params, batch: MetaBatch) -> MetaObjective:
    adaptation = adapt_meta_batch(pol, theta, batch.train, batch.train_advantages, batch.inner)
    return MetaObjective(pol, batch, adaptation)


def rel(a: Tensor, b: Tensor) -> float:
    """Relative error of ``a`` against ``b`` (0 when both are exactly zero)."""
    diff = float((a - b).norm())
    return 0.0 if diff == 0.0 else diff / float(b.norm())


def assert_grads_close(a: Tensor, b: Tensor, *, scale: float, rtol: float = 1e-10) -> None:
    """``|a - b| <= rtol * max(|a|, |b|) + atol`` (2-norms), ``atol = 1024 eps64 scale``.

    A relative error alone compares rounding noise where a gradient cancels to ~0: the meta-KL's
    gradient at ``theta`` is exactly 0 in exact arithmetic (the KL is minimal there) and
    computes as 1e-17..1e-19, the leftover of sums of O(``scale``) terms, which two float64
    evaluations by different routes (or another CPU's kernels) need not share. ``scale`` is the
    size of those terms: the norm of the full meta-gradient at the same point (~0.8 here). A
    float64 sum of a few hundred such terms rounds within ~``n eps scale``; 1024 ulps of
    ``scale`` (2.3e-13 scale) is that floor with room, below ``rtol`` of an O(``scale``)
    gradient, and 1e12 times below what a wrong formula gives (an O(``scale``) error)."""
    atol = 1024 * torch.finfo(torch.float64).eps * scale
    diff = float((a - b).norm())
    bound = rtol * max(float(a.norm()), float(b.norm())) + atol
    assert diff <= bound, f"|a - b| = {diff:.3g} > {bound:.3g} (|b| = {float(b.norm()):.3g})"


def test_gradient_comparison_floors_rounding_noise_only() -> None:
    """What another CPU gave at theta (issue 14): KL gradients of 1e-17 that agree in no digit;
    the relative error calls that a failure, the floored comparison does not, while an O(1)
    error or a 1e-9 relative one still fails."""
    gen = torch.Generator().manual_seed(0)
    ref = 1e-17 * torch.randn(100, generator=gen, dtype=D)
    other = 1e-17 * torch.randn(100, generator=gen, dtype=D)
    assert rel(other, ref) > 1e-10  # the old assertion's verdict
    assert_grads_close(other, ref, scale=0.8)
    big = torch.randn(100, generator=gen, dtype=D)
    for wrong in (big + 1e-9 * big.norm() / 10, torch.zeros_like(big)):
        with pytest.raises(AssertionError):
            assert_grads_close(wrong, big, scale=float(big.norm()))


INNERS = [
    InnerLoopConfig(lr=0.1),
    InnerLoopConfig(steps=2, lr=0.1),
    InnerLoopConfig(lr=0.1, first_order=True),
]


@pytest.mark.parametrize("inner", INNERS)
def test_meta_gradient_at_theta_old_reuses_the_adaptation_and_matches_finite_differences(
    relu64: tuple[Policy, Params, MetaBatch], inner: InnerLoopConfig
) -> None:
    """The gradient the outer step takes at theta_old (pulled back through the adaptation the
    learner sampled with) against central differences of the meta-objective, float64."""
    pol, theta, batch = relu64
    batch = with_inner(batch, inner)
    obj = objective(pol, theta, batch)
    loss, grad = obj.loss_and_grad(obj.theta_old)
    fd = central_fd_grad(lambda q: meta_surrogate(pol, q, batch), theta)
    assert float(loss) == pytest.approx(float(meta_surrogate(pol, theta, batch)), rel=1e-12)
    if inner.first_order:
        assert rel(grad, fd) > 0.05  # FOMAML is not the meta-objective's gradient
        ref = flat_grad(lambda q: meta_surrogate(pol, q, batch), theta)[1]
        assert_grads_close(grad, ref, scale=float(ref.norm()))
    else:
        assert rel(grad, fd) < 1e-6


@pytest.mark.parametrize("inner", INNERS)
@pytest.mark.parametrize("which", ["tanh", "relu"])
def test_meta_objective_matches_autograd_on_the_objectives(
    setup64: tuple[Policy, Params, MetaBatch],
    relu64: tuple[Policy, Params, MetaBatch],
    inner: InnerLoopConfig,
    which: str,
) -> None:
    pol, theta, batch = setup64 if which == "tanh" else relu64
    batch = with_inner(batch, inner)
    old = adapted_stats(pol, theta, batch)
    obj = objective(pol, theta, batch)
    for name, stats in obj.old_stats.items():
        torch.testing.assert_close(stats, old[name], rtol=1e-12, atol=1e-14)
    for at in (obj.theta_old, perturbed(theta, 12)):
        loss, grad = obj.loss_and_grad(at)
        ref_loss, ref_grad = flat_grad(lambda q: meta_surrogate(pol, q, batch), at)
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12, abs=1e-15)
        scale = float(ref_grad.norm())  # the O(1) magnitude of the gradients' terms
        assert_grads_close(grad, ref_grad, scale=scale)
        ref_kl = flat_grad(lambda q: meta_kl(pol, q, batch, old), at)[1]
        assert_grads_close(obj.kl_grad(at), ref_kl, scale=scale)  # ~0 at theta
        both, ref_both = obj.loss_and_kl(at), meta_surrogate_and_kl(pol, at, batch, old)
        torch.testing.assert_close(torch.stack(both), torch.stack(ref_both))
    assert float(ref_kl.norm()) > 1e-3  # away from theta the KL gradient is not trivially 0


def test_adapt_meta_batch_equals_adapt_tasks_and_is_reused_by_the_outer_step(
    relu64: tuple[Policy, Params, MetaBatch],
) -> None:
    pol, theta, batch = relu64
    for inner in INNERS:
        b = with_inner(batch, inner)
        adaptation = adapt_meta_batch(pol, theta, b.train, b.train_advantages, inner)
        reference = adapt_tasks(pol, theta, b.train, b.train_advantages, inner)
        for name, p in reference.items():
            torch.testing.assert_close(adaptation.params[name], p, rtol=1e-12, atol=1e-14)
        steps = [meta_trpo_step(pol, theta, b, adaptation=a)[0] for a in (adaptation, None)]
        for name in theta:
            assert torch.equal(steps[0][name], steps[1][name])
    adaptation = adapt_meta_batch(pol, theta, batch.train, batch.train_advantages, batch.inner)
    with pytest.raises(ValueError, match="adaptation must come from adapt_meta_batch at params"):
        meta_trpo_step(pol, perturbed(theta, 14), batch, adaptation=adaptation)
    other = with_inner(batch, InnerLoopConfig(lr=0.05))
    with pytest.raises(ValueError, match="adaptation must come from adapt_meta_batch"):
        MetaObjective(pol, other, adaptation)


# ---------------------------------------------- Gauss-Newton products of the meta-KL


@pytest.mark.parametrize("which", ["tanh", "relu"])
@pytest.mark.parametrize("inner", INNERS)
def test_gauss_newton_hvp_is_the_exact_meta_kl_hessian_at_theta_old(
    setup64: tuple[Policy, Params, MetaBatch],
    relu64: tuple[Policy, Params, MetaBatch],
    which: str,
    inner: InnerLoopConfig,
) -> None:
    """J^T F J v by torch.func (J v through the kept pull-back for one step or first order,
    by jvp for two) against exact double backprop and against central differences of the
    meta-KL's gradient (float64; not first order, whose gradient drops the adaptation's
    Jacobian that differences of it see)."""
    pol, theta, batch = setup64 if which == "tanh" else relu64
    batch = with_inner(batch, inner)
    old = adapted_stats(pol, theta, batch)
    n = flatten_params(theta).numel()
    v = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=D)
    exact = hvp_exact(lambda q: meta_kl(pol, q, batch, old), theta, v)
    assert float(exact.norm()) > 1e-2
    obj = objective(pol, theta, batch)
    gn = obj.gauss_newton_hvp(v)
    assert rel(gn, exact) < 1e-10
    if not inner.first_order:
        fd = hvp_finite_difference(obj.kl_grad, theta, v, base_eps=1e-4)
        assert rel(gn, fd) < 1e-6


def test_gauss_newton_hvp_is_not_the_hessian_away_from_theta_old(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    # J^T F J drops sum_out dKL/dout * d2out/dtheta2, which is 0 only where dKL/dout is:
    # at the old weights. Away from them the meta-KL's Hessian has that term too.
    pol, theta, batch = setup64
    away = perturbed(theta, 13, scale=0.2)
    old = adapted_stats(pol, theta, batch)
    v = torch.randn(
        flatten_params(theta).numel(), generator=torch.Generator().manual_seed(6), dtype=D
    )
    hessian_away = hvp_exact(lambda q: meta_kl(pol, q, batch, old), away, v)
    gn_at_theta = objective(pol, theta, batch).gauss_newton_hvp(v)
    gn_away = objective(pol, away, batch).gauss_newton_hvp(v)
    assert rel(gn_away, hessian_away) > 0.05
    assert rel(gn_at_theta, hessian_away) > 0.05


def test_fd_hvp_on_relu_meta_kl_at_init_needs_a_large_base_eps() -> None:
    """At initialisation (zero biases) every episode's first observation (the origin) sits on
    the ReLU kink, so the meta-KL's gradient jumps at theta_old and a central difference of it
    carries an error ~ jump / eps; the config's default eps keeps that small in float32."""
    pol = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(16, 16), init_log_std=-0.5)
    theta = pol.init_params(torch.Generator().manual_seed(0))
    batch = make_meta_batch(pol, theta, InnerLoopConfig(lr=0.1), seed=3, num_tasks=4)
    obj = objective(pol, theta, batch)
    v = obj.loss_and_grad(obj.theta_old)[1]
    exact = obj.gauss_newton_hvp(v)

    def cosine(base_eps: float) -> float:
        fd = hvp_finite_difference(obj.kl_grad, theta, v, base_eps=base_eps)
        return float(torch.nn.functional.cosine_similarity(fd, exact, dim=0))

    assert cosine(TRPOConfig().fd_base_eps) > 0.99
    assert cosine(1e-5) < 0.9  # the paper's eps: dominated by the jump


# ---------------------------------------------------------------- one outer step


@pytest.mark.parametrize("hvp", ["finite_difference", "exact", "gauss_newton"])
def test_meta_trpo_step_decreases_surrogate_within_max_kl(
    setup64: tuple[Policy, Params, MetaBatch], hvp: str
) -> None:
    pol, theta, batch = setup64
    new, stats = meta_trpo_step(pol, theta, batch, TRPOConfig(max_kl=0.01, hvp=hvp))  # type: ignore[arg-type]
    assert stats.step_accepted
    old = adapted_stats(pol, theta, batch)
    with torch.no_grad():
        before, after = meta_surrogate(pol, theta, batch), meta_surrogate(pol, new, batch)
        kl = meta_kl(pol, new, batch, old)
    assert float(after) < float(before) - 1e-4
    assert 0.0 < float(kl) <= 0.01
    assert stats.kl_after == pytest.approx(float(kl)) and stats.loss_after == pytest.approx(
        float(after)
    )


def test_hvp_subsample_takes_the_kl_on_every_tasks_first_valid_episodes_in_every_method(
    setup64: tuple[Policy, Params, MetaBatch],
) -> None:
    """With hvp_subsample 1/2 (two of each task's four valid episodes) all three product
    methods solve with the curvature of the meta-KL on those episodes, every task adapted on
    all its train episodes (float64, fine finite differences): their steps agree, and differ
    from the all-episodes step. (Damping 0.1: two episodes of a task pin down few directions,
    and conjugate gradient on a nearly singular curvature amplifies the finite differences'
    1e-9..1e-7 errors in the others; at 1e-2 the steps' cosine is 0.989.)"""
    pol, theta, batch = setup64
    assert curvature_episodes(0.1, 20) == 2 and curvature_episodes(0.01, 20) == 1
    assert curvature_episodes(1.0, 20) == 20
    with pytest.raises(ValueError, match="hvp_subsample"):
        curvature_episodes(0.0, 20)
    half = batch.first_valid_episodes(2)
    assert half.num_tasks == 3 and half.train is batch.train
    assert half.valid.episodes_per_task == 2
    for k in range(3):  # task k's first valid episodes, with their advantages
        torch.testing.assert_close(half.valid.task(k).actions, batch.valid.task(k).actions[:, :2])
        torch.testing.assert_close(half.valid_advantages[:, 2 * k : 2 * k + 2],
                                   batch.valid_advantages[:, 4 * k : 4 * k + 2])  # fmt: skip
    # the curvature's objective: the KL on those episodes of the fully adapted policies
    adaptation = adapt_meta_batch(pol, theta, batch.train, batch.train_advantages, batch.inner)
    curv = MetaObjective(pol, half, adaptation)
    at = perturbed(theta, 21)
    torch.testing.assert_close(curv.kl(at), meta_kl(pol, at, half, adapted_stats(pol, theta, half)))
    steps = {}
    for hvp in ("finite_difference", "exact", "gauss_newton"):
        for frac in (1.0, 1 / 2):
            config = TRPOConfig(
                max_kl=0.01, hvp=hvp, hvp_subsample=frac, fd_base_eps=1e-5, damping=0.1,
            )  # type: ignore[arg-type]  # fmt: skip
            new, stats = meta_trpo_step(pol, theta, batch, config)
            assert stats.step_accepted and stats.kl_after <= 0.01
            assert (stats.step_rescale == 1.0) == (frac == 1.0)
            steps[hvp, frac] = flatten_params(new) - flatten_params(theta)

    def cos(a: Tensor, b: Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    for hvp in ("finite_difference", "gauss_newton"):
        assert cos(steps[hvp, 1 / 2], steps["exact", 1 / 2]) > 0.9999
    assert cos(steps["exact", 1 / 2], steps["exact", 1.0]) < 0.9


def test_meta_batch_validation(setup64: tuple[Policy, Params, MetaBatch]) -> None:
    _, _, batch = setup64
    with pytest.raises(ValueError, match="valid_advantages must have shape"):
        MetaBatch(batch.train, batch.train_advantages, batch.valid, batch.valid_advantages[:, :3])
    with pytest.raises(ValueError, match=r"inner\.steps must be >= 1"):
        dataclasses.replace(batch, inner=InnerLoopConfig(steps=0))
    with pytest.raises(IndexError, match="first_episodes"):
        batch.first_valid_episodes(5)


# ---------------------------------------------------------------- a categorical policy


def categorical_meta_batch() -> tuple[Policy, Params, MetaBatch]:
    """Random-observation episodes of a categorical policy (3 tasks x 4 episodes x 6 steps),
    valid ones acting with the adapted weights: enough to check the derivatives' algebra."""
    pol = CategoricalMLPPolicy(obs_dim=3, num_actions=4, hidden_sizes=(8, 8))
    theta = pol.init_params(torch.Generator().manual_seed(0), dtype=D)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 7, (12,), generator=gen)

    def episodes(params: Params, per_task: bool) -> EpisodeBatch:
        obs = torch.randn(6, 12, 3, generator=gen, dtype=D)
        if per_task:
            acts, lps = pol.sample_per_task(params, obs.view(6, 3, 4, 3).movedim(1, 0), gen)
            acts, lps = acts.movedim(0, 1).reshape(6, 12), lps.movedim(0, 1).reshape(6, 12)
        else:
            acts, lps = pol.sample(params, obs, gen)
        mask = (torch.arange(6).unsqueeze(1) < lengths).to(D)
        return EpisodeBatch(
            observations=obs * mask.unsqueeze(-1), actions=acts * mask.long(),
            rewards=torch.randn(6, 12, generator=gen, dtype=D) * mask, mask=mask,
            lengths=lengths, terminated=lengths < 6, truncated=lengths == 6,
            last_observations=torch.randn(12, 3, generator=gen, dtype=D), log_probs=lps * mask,
            num_tasks=3, episodes_per_task=4,
        )  # fmt: skip

    train = episodes(theta, per_task=False)
    train_adv = compute_advantages(train, gamma=0.99)
    adapted = adapt_tasks(pol, theta, train, train_adv, InnerLoopConfig(lr=0.1))
    valid = episodes(adapted, per_task=True)
    return pol, theta, MetaBatch(train, train_adv, valid, compute_advantages(valid, gamma=0.99))


def test_meta_derivatives_of_a_categorical_policy_match_autograd() -> None:
    pol, theta, batch = categorical_meta_batch()  # a head without weights, 4 outputs
    old = adapted_stats(pol, theta, batch)
    at = perturbed(theta, 14)
    ref_grad = flat_grad(lambda q: meta_surrogate(pol, q, batch), at)[1]
    ref_kl = flat_grad(lambda q: meta_kl(pol, q, batch, old), at)[1]
    v = torch.randn(ref_grad.numel(), generator=torch.Generator().manual_seed(8), dtype=D)
    exact = hvp_exact(lambda q: meta_kl(pol, q, batch, old), theta, v)
    obj = objective(pol, theta, batch)
    assert rel(obj.loss_and_grad(at)[1], ref_grad) < 1e-10
    assert rel(obj.kl_grad(at), ref_kl) < 1e-10 and float(ref_kl.norm()) > 1e-3
    assert rel(obj.gauss_newton_hvp(v), exact) < 1e-10
    ref_at_theta = flat_grad(lambda q: meta_surrogate(pol, q, batch), theta)[1]
    assert rel(obj.loss_and_grad(obj.theta_old)[1], ref_at_theta) < 1e-10
