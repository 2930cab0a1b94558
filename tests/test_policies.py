"""Policies: closed forms against torch.distributions, determinism, vmap, structure."""

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from metarl.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Params, Policy

D = torch.float64


def gaussian() -> Policy:
    return GaussianMLPPolicy(
        obs_dim=3, act_dim=2, hidden_sizes=(5, 4), activation="tanh", init_log_std=-0.3
    )


def categorical() -> Policy:
    return CategoricalMLPPolicy(obs_dim=3, num_actions=4, hidden_sizes=(5,), activation="relu")


def perturbed(params: Params, seed: int, scale: float = 0.3) -> Params:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()
    }


def normal(policy: Policy, params: Params, obs: torch.Tensor) -> Independent:
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
    dist0 = Categorical(logits=pol.network_output(p0, obs))
    dist1 = Categorical(logits=pol.network_output(p1, obs))
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


def test_gaussian_init_log_std_glorot_mlp_and_hand_computed_forward() -> None:
    pol = gaussian()
    params = pol.init_params(torch.Generator().manual_seed(2))
    assert list(params) == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
        "mlp.4.bias", "log_std",
    ]  # fmt: skip
    torch.testing.assert_close(params["log_std"], torch.full((2,), -0.3))
    # Glorot-uniform matrices drawn layer by layer from the generator, zero biases
    gen = torch.Generator().manual_seed(2)
    layers = zip(("mlp.0", "mlp.2", "mlp.4"), [(3, 5), (5, 4), (4, 2)], strict=True)
    for name, (n_in, n_out) in layers:
        bound = (6.0 / (n_in + n_out)) ** 0.5
        expected_w = torch.rand(n_out, n_in, generator=gen) * (2.0 * bound) - bound
        assert torch.equal(params[f"{name}.weight"], expected_w)
        assert torch.equal(params[f"{name}.bias"], torch.zeros(n_out))
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    x = torch.tanh(obs @ params["mlp.0.weight"].T + params["mlp.0.bias"])
    x = torch.tanh(x @ params["mlp.2.weight"].T + params["mlp.2.bias"])
    expected = x @ params["mlp.4.weight"].T + params["mlp.4.bias"]
    torch.testing.assert_close(pol.dist_stats(params, obs)["mean"], expected)


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
    freq = torch.bincount(acts, minlength=4).double() / len(acts)
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
    with pytest.raises(ValueError, match="layer sizes"):
        GaussianMLPPolicy(obs_dim=2, act_dim=2, hidden_sizes=(0,))
