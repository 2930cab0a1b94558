"""Functional networks: the fast forward equals functional_call; seeded initialisation."""

import pytest
import torch

from metarl.supervised.networks import MLP, apply, init_params


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fast_forward_equals_functional_call(activation: str) -> None:
    mlp = MLP(in_features=3, out_features=2, hidden_sizes=(5, 4), activation=activation)
    params = init_params(mlp, torch.Generator().manual_seed(0), torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    reference = torch.func.functional_call(mlp, params, (x,))
    torch.testing.assert_close(apply(mlp, params, x), reference, rtol=0, atol=0)
    assert set(params) == {n for n, _ in mlp.named_parameters()}


def test_init_is_seeded_and_uses_the_default_fan_in_bound() -> None:
    mlp = MLP(in_features=1, out_features=1, hidden_sizes=(40, 40))
    a = init_params(mlp, torch.Generator().manual_seed(0), torch.float32)
    b = init_params(mlp, torch.Generator().manual_seed(0), torch.float32)
    c = init_params(mlp, torch.Generator().manual_seed(1), torch.float32)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.0.weight"], c["net.0.weight"])
    assert a["net.2.weight"].abs().max() <= 1 / 40**0.5
    assert a["net.2.weight"].abs().max() > 0.9 / 40**0.5
    assert a["net.0.weight"].abs().max() > 0.9  # fan-in 1: bound 1


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation 'gelu' not in"):
        MLP(in_features=1, out_features=1, hidden_sizes=(4,), activation="gelu")
