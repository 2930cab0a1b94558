"""Small networks whose weights live in a ``dict[str, Tensor]`` and are applied functionally."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Params = dict[str, Tensor]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""The torch dtype of each config ``dtype`` value."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """A fully connected network ``in -> hidden... -> out``.

    The module holds the structure and an initial set of weights; training code keeps its
    weights as a dict and calls :func:`torch.func.functional_call` (see :func:`apply`).
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation {activation!r} not in {sorted(ACTIVATIONS)}")
        sizes = [in_features, *hidden_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.net = nn.Sequential(*layers)
        self._act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
        self._keys = [(f"net.{2 * i}.weight", f"net.{2 * i}.bias") for i in range(len(sizes))]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def forward_with(self, params: Params, x: Tensor) -> Tensor:
        """The same function as ``forward`` with the weights in ``params``.

        Equal to ``functional_call(self, params, (x,))`` but without the module swap, which
        is a measurable share of a small network's time.
        """
        last = len(self._keys) - 1
        for i, (weight, bias) in enumerate(self._keys):
            x = F.linear(x, params[weight], params[bias])
            if i < last:
                x = self._act(x)
        return x


def init_params(module: nn.Module, generator: torch.Generator, dtype: torch.dtype) -> Params:
    """Fresh weights for ``module`` drawn from ``generator`` with PyTorch's default init.

    Same generator state, same weights: the module's own parameters are left untouched.
    """
    params: Params = {}
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            fan_in = params[name.removesuffix("bias") + "weight"].shape[1]
        else:
            fan_in = p.shape[1] if p.dim() > 1 else p.shape[0]
        bound = 1.0 / fan_in**0.5
        value = torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1
        params[name] = (value * bound).to(dtype)
    return params


def apply(module: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Run ``module`` with the weights in ``params`` (``functional_call`` for any module)."""
    if isinstance(module, MLP):
        return module.forward_with(params, x)
    out: Tensor = torch.func.functional_call(module, params, (x,))
    return out
