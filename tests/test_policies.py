"""Policies: closed forms against torch.distributions, determinism, vmap, structure."""

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Params

D = torch.float64


def gaussian() -> GaussianMLPPolicy:
    return GaussianMLPPolicy(
        obs_dim=3, act_dim=2, hidden_sizes=(5, 4), activation="tanh", init_log_std=-0.3
    )


def categorical() -> CategoricalMLPPolicy:
    return CategoricalMLPPolicy(obs_dim=3, num_actions=4, hidden_sizes=(5,), activation="relu")


def perturbed(params: Params, seed: int, scale: float = 0.3) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()
    }


def normal(policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor) -> Independent:
    s = policy.dist_stats(params, obs)
    return Independent(Normal(s["mean"], s["log_std"].exp()), 1)


def test_gaussian_log_prob_kl_entropy_match_torch_distributions() -> None:
    pol = gaussian()
    gen = torch.Generator().manual_seed(0)
    p0 = pol.init_params(gen, dtype=D)
    p1 = perturbed(p0, 1)
    obs = torch.randn(7, 3, generator=gen, dtype=D)
    acts = torch.randn(7, 2, generator=gen, dtype=D)
    torch.testing.assert_close(pol.log_prob(p1, obs, acts), normal(pol, p1, obs).log_prob(acts))
    torch.testing.assert_close(pol.entropy(p1, obs), normal(pol, p1, obs).entropy())
    old = pol.detached_stats(p0, obs)
    expected_kl = kl_divergence(normal(pol, p0, obs), normal(pol, p1, obs))
    torch.testing.assert_close(pol.kl(old, p1, obs), expected_kl)
    assert bool((expected_kl > 1e-3).all())


def test_categorical_log_prob_kl_entropy_match_torch_distributions() -> None:
    pol = categorical()
    gen = torch.Generator().manual_seed(0)
    p0 = pol.init_params(gen, dtype=D)
    p1 = perturbed(p0, 1)
    obs = torch.randn(7, 3, generator=gen, dtype=D)
    acts = torch.randint(0, 4, (7,), generator=gen)
    dist0 = Categorical(logits=pol.body(p0, obs))
    dist1 = Categorical(logits=pol.body(p1, obs))
    torch.testing.assert_close(pol.log_prob(p1, obs, acts), dist1.log_prob(acts))
    torch.testing.assert_close(pol.entropy(p1, obs), dist1.entropy())
    torch.testing.assert_close(
        pol.kl(pol.detached_stats(p0, obs), p1, obs), kl_divergence(dist0, dist1)
    )


@pytest.mark.parametrize("make", [gaussian, categorical])
def test_init_params_deterministic_per_generator(make: type) -> None:
    pol = make()
    a = pol.init_params(torch.Generator().manual_seed(5))
    b = pol.init_params(torch.Generator().manual_seed(5))
    c = pol.init_params(torch.Generator().manual_seed(6))
    assert a.keys() == b.keys() == dict(pol.named_parameters()).keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # the module's own weights are init_params of a generator seeded with `seed` (default 0)
    own = pol.params()
    zero = pol.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(own[k], zero[k]) for k in own)


def test_gaussian_init_log_std_and_body_matches_functional_call() -> None:
    pol = gaussian()
    params = pol.init_params(torch.Generator().manual_seed(2))
    torch.testing.assert_close(params["log_std"], torch.full((2,), -0.3))
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    mlp_params = {k.removeprefix("mlp."): v for k, v in params.items() if k.startswith("mlp.")}
    expected = torch.func.functional_call(pol.mlp, mlp_params, (obs,))
    torch.testing.assert_close(pol.body(params, obs), expected)


@pytest.mark.parametrize("make", [gaussian, categorical])
def test_sample_deterministic_and_log_probs_consistent(make: type) -> None:
    pol = make()
    params = pol.init_params(torch.Generator().manual_seed(0))
    obs = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    a1, lp1 = pol.sample(params, obs, torch.Generator().manual_seed(9))
    a2, lp2 = pol.sample(params, obs, torch.Generator().manual_seed(9))
    a3, _ = pol.sample(params, obs, torch.Generator().manual_seed(10))
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2) and not torch.equal(a1, a3)
    torch.testing.assert_close(lp1, pol.log_prob(params, obs, a1))
    assert not lp1.requires_grad


def test_gaussian_sample_statistics() -> None:
    pol = gaussian()
    params = pol.init_params(torch.Generator().manual_seed(0), dtype=D)
    obs = torch.zeros(20000, 3, dtype=D)
    acts, _ = pol.sample(params, obs, torch.Generator().manual_seed(0))
    mean = pol.dist_stats(params, obs[:1])["mean"][0]
    torch.testing.assert_close(acts.mean(0), mean, atol=0.02, rtol=0.0)
    torch.testing.assert_close(
        acts.std(0), torch.full((2,), 0.3).exp().reciprocal().double(), atol=0.02, rtol=0.0
    )


def test_categorical_sample_frequencies_match_probabilities() -> None:
    pol = categorical()
    params = pol.init_params(torch.Generator().manual_seed(0), dtype=D)
    params = {k: v * 4.0 for k, v in params.items()}  # far from uniform
    obs = torch.full((40000, 3), 0.5, dtype=D)
    acts, lps = pol.sample(params, obs, torch.Generator().manual_seed(0))
    probs = pol.dist_stats(params, obs[:1])["log_probs"][0].exp()
    freq = torch.bincount(acts, minlength=pol.num_actions).double() / len(acts)
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0.0)  # ~4 standard errors
    torch.testing.assert_close(lps, probs.log()[acts])


def test_noise_drawn_apart_gives_the_same_actions_for_any_split() -> None:
    """What lets sampler workers act on slices of the sub-envs: act() on a slice of the noise
    equals the slice of act() on the whole batch."""
    for pol in (gaussian(), categorical()):
        params = pol.init_params(torch.Generator().manual_seed(0))
        obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
        noise = pol.draw_noise((64,), torch.Generator().manual_seed(2))
        whole, whole_lp = pol.act(params, obs, noise)
        part, part_lp = pol.act(params, obs[16:48], noise[16:48])
        assert torch.equal(part, whole[16:48]) and torch.equal(part_lp, whole_lp[16:48])
        rebuilt = pol.spec().build()
        assert type(rebuilt) is type(pol) and torch.equal(rebuilt.act(params, obs, noise)[0], whole)


@pytest.mark.parametrize("make", [gaussian, categorical])
def test_functional_methods_under_vmap_match_loop(make: type) -> None:
    pol = make()
    gen = torch.Generator().manual_seed(0)
    stacked = {
        k: torch.stack([v, v + 0.1, v - 0.2]) for k, v in pol.init_params(gen, dtype=D).items()
    }
    obs = torch.randn(3, 6, 3, generator=gen, dtype=D)
    acts, _ = pol.sample_per_task(stacked, obs, gen)
    got_lp = torch.func.vmap(pol.log_prob)(stacked, obs, acts)
    old = {k: v.roll(1, 0) for k, v in torch.func.vmap(pol.dist_stats)(stacked, obs).items()}
    got_kl = torch.func.vmap(pol.kl)(old, stacked, obs)
    got_ent = torch.func.vmap(pol.entropy)(stacked, obs)
    for i in range(3):
        p_i = {k: v[i] for k, v in stacked.items()}
        torch.testing.assert_close(got_lp[i], pol.log_prob(p_i, obs[i], acts[i]))
        torch.testing.assert_close(
            got_kl[i], pol.kl({k: v[i] for k, v in old.items()}, p_i, obs[i])
        )
        torch.testing.assert_close(got_ent[i], pol.entropy(p_i, obs[i]))
    assert bool((got_kl > 0).all())


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        GaussianMLPPolicy(obs_dim=2, act_dim=2, activation="gelu")
    with pytest.raises(ValueError, match="num_actions"):
        CategoricalMLPPolicy(obs_dim=2, num_actions=1)


# ------------------------------------------------ task-batched calculus against autograd


def task_batched(pol: GaussianMLPPolicy, k: int, seed: int) -> Params:
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


def body_out(pol: GaussianMLPPolicy, obs: torch.Tensor, params: Params) -> torch.Tensor:
    return torch.func.vmap(pol.body)(params, obs)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_body_calculus_matches_torch_func(activation: str) -> None:
    pol = GaussianMLPPolicy(obs_dim=3, act_dim=2, hidden_sizes=(6, 5), activation=activation)
    params = pol.body_params(task_batched(pol, 4, seed=0))
    gen = torch.Generator().manual_seed(9)
    obs = torch.randn(4, 7, 3, generator=gen, dtype=D)
    out_cot, out_cot_t = (torch.randn(4, 7, 2, generator=gen, dtype=D) for _ in range(2))
    tangent = random_like(params, seed=3)
    trace = pol.body_trace(params, obs)
    torch.testing.assert_close(trace.output, body_out(pol, obs, params))
    # backward pass against autograd's vjp
    vjp_fn = torch.func.vjp(lambda p: body_out(pol, obs, p), params)[1]
    cot = pol.body_vjp(params, trace, out_cot)
    for name, g in vjp_fn(out_cot)[0].items():
        torch.testing.assert_close(cot.grads[name], g)
    # forward mode against torch.func.jvp
    tan = pol.body_jvp(params, trace, tangent)
    expected_t = torch.func.jvp(lambda p: body_out(pol, obs, p), (params,), (tangent,))[1]
    torch.testing.assert_close(tan.output, expected_t)

    # R-operator: the tangent of the backward pass, by forward-over-reverse autodiff
    def grads_of(p: Params, c: torch.Tensor) -> Params:
        grads: Params = torch.func.vjp(lambda q: body_out(pol, obs, q), p)[1](c)[0]
        return grads

    expected: Params = torch.func.jvp(grads_of, (params, out_cot), (tangent, out_cot_t))[1]
    got = pol.body_vjp_tangent(params, trace, cot, tangent, tan, out_cot_t)
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g)
    assert float(expected["mlp.0.weight"].norm()) > 1e-3  # second-order terms reach layer 0


def test_low_rank_calculus_matches_general_one() -> None:
    pol = GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(9, 8))
    assert pol.supports_low_rank()
    params = task_batched(pol, 3, seed=1)
    gen = torch.Generator().manual_seed(2)
    obs = torch.randn(3, 11, 2, generator=gen, dtype=D)
    out_cot, out_cot_t = (torch.randn(3, 11, 2, generator=gen, dtype=D) for _ in range(2))
    tangent = random_like(params, seed=4)
    trace = pol.body_trace(params, obs)
    cot = pol.body_vjp(params, trace, out_cot)
    jac = pol.output_jacobian(params, trace)
    tan = pol.body_jvp(params, trace, tangent)
    out_t, p = pol.low_rank_jvp(params, trace, jac, tangent)
    torch.testing.assert_close(out_t, tan.output)
    for name, g in pol.low_rank_vjp(params, trace, jac, out_cot).items():
        torch.testing.assert_close(g, cot.grads[name])
    moments = pol.relu_moments(params, trace, cot)
    got = pol.low_rank_vjp_tangent(params, trace, cot, moments, tangent, p, out_cot_t)
    expected = pol.body_vjp_tangent(params, trace, cot, tangent, tan, out_cot_t)
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g)


def test_supports_low_rank_only_for_small_two_layer_relu_bodies() -> None:
    assert GaussianMLPPolicy(obs_dim=2, act_dim=2).supports_low_rank()
    assert not GaussianMLPPolicy(obs_dim=2, act_dim=2, activation="tanh").supports_low_rank()
    assert not GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(8,)).supports_low_rank()
    assert not GaussianMLPPolicy(obs_dim=20, act_dim=6).supports_low_rank()  # half-cheetah
