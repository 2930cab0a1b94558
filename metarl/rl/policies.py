"""Policies: a network (any ``torch.nn.Module``) and a distribution head, used functionally.

A :class:`Policy` holds the architecture and a set of initial weights; every method takes the
weights explicitly (``params``, a ``dict[str, Tensor]``), so the same policy acts with the
meta-parameters ``theta`` or with adapted ``theta_i``, and everything composes with
``torch.func.grad`` / ``vmap`` / ``jvp`` (``sample`` excepted: it draws from a
``torch.Generator`` and is meant for the sampler, outside any transform).

The network maps observations ``[..., obs_dim]`` to ``[..., out_dim]`` and is applied with
:func:`torch.func.functional_call`; by default it is the paper's MLP (:class:`MLPNetwork`), or
any module a factory ``"module:function"`` builds (:class:`NetworkSpec`). The head turns that
output into the action distribution's parameters, its *statistics* (``DistStats``, a dict of
tensors with the batch shape in front): ``{"mean", "log_std"}`` for the Gaussian (state-
independent, learned log-std), ``{"log_probs"}`` (normalised logits) for the categorical. The
one way to get them is :meth:`Policy.dist_stats`; log-probabilities, KL and entropy are closed
forms of statistics (no ``torch.distributions``). Detached statistics of an old policy give
``KL(old || new)``.

Weights are named after the module: the default MLP's ``mlp.0.weight``, ``mlp.0.bias``,
``mlp.2.weight``, ... (activations at the odd indices), a user network's ``net.<its names>``,
and the head's (``log_std``) bare.
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]
DistStats = dict[str, Tensor]

_LOG_2PI = math.log(2.0 * math.pi)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLPNetwork(nn.Sequential):
    """The default network: ``obs -> hidden layers (activation) -> linear output``, as an
    ``nn.Sequential`` of ``Linear`` layers (even indices) and activations (odd indices)."""

    def __init__(
        self, obs_dim: int, out_dim: int, *, hidden_sizes: tuple[int, ...], activation: str
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"policy activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        sizes = (obs_dim, *hidden_sizes, out_dim)
        if any(s < 1 for s in sizes):
            raise ValueError(f"policy layer sizes must be >= 1, got {sizes}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            if i > 0:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(n_in, n_out, device="meta"))
        super().__init__(*layers)
        self.sizes = sizes
        self.activation = activation

    def glorot_params(self, generator: torch.Generator, dtype: torch.dtype) -> Params:
        """Glorot-uniform matrices and zero biases (as rllab / the MAML code), drawn from
        ``generator`` layer by layer."""
        params: Params = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(self.sizes)):
            bound = math.sqrt(6.0 / (n_in + n_out))
            w = torch.rand(n_out, n_in, generator=generator) * (2.0 * bound) - bound
            params[f"{2 * i}.weight"] = w.to(dtype)
            params[f"{2 * i}.bias"] = torch.zeros(n_out, dtype=dtype)
        return params


@dataclass(frozen=True)
class NetworkSpec:
    """How to build a policy's network (small and picklable: a sampler worker rebuilds it).

    ``factory`` ``None``: the default :class:`MLPNetwork` of ``hidden_sizes`` and
    ``activation``. Otherwise ``"module:function"``, a callable ``function(obs_dim, out_dim,
    **kwargs) -> nn.Module`` whose module maps ``[..., obs_dim]`` to ``[..., out_dim]``, is
    pure in its inputs (``vmap`` applies it per task) and keeps its weights in parameters
    (buffers stay the module's own, as constants). Its initial weights are its own
    initialisation, run under a seed drawn from the caller's generator."""

    hidden_sizes: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The name the network's weights start with: ``mlp.`` (default) or ``net.``."""
        return "mlp." if self.factory is None else "net."

    def build(self, obs_dim: int, out_dim: int) -> nn.Module:
        """A new network (a user factory's with the global RNG state it finds)."""
        if self.factory is None:
            return MLPNetwork(
                obs_dim, out_dim, hidden_sizes=self.hidden_sizes, activation=self.activation
            )
        module = load_factory(self.factory)(obs_dim, out_dim, **self.kwargs)
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"policy network {self.factory!r} returned {type(module).__name__}, "
                "not a torch.nn.Module"
            )
        return module


def load_factory(path: str) -> Callable[..., Any]:
    """The callable named ``"module:function"`` (the module imported on the Python path);
    a clear ``ValueError`` when it cannot be found."""
    module_name, sep, name = path.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"policy network {path!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"policy network {path!r}: cannot import {module_name!r}: {err}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"policy network {path!r}: {module_name!r} has no callable {name!r}")
    return fn  # type: ignore[no-any-return]


class CompositeLayerNorm(torch.overrides.TorchFunctionMode):
    """Within it, ``F.layer_norm`` (``nn.LayerNorm``'s) runs as elementwise ops. torch's
    batching rule for the native layer norm's backward is wrong for its input's gradient
    (pytorch/functorch#534, open in torch 2.13), which made the second-order meta-gradient of a
    network with a LayerNorm, through ``vmap`` over tasks, wrong (in a minimal case by 100%);
    autograd of the elementwise ops is right. Same values up to rounding."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.layer_norm or func is torch.layer_norm:
            return _layer_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _layer_norm(
    x: Tensor,
    normalized_shape: tuple[int, ...] | list[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *_: Any,
) -> Tensor:
    """``F.layer_norm`` written with elementwise ops (population variance, as torch)."""
    dims = tuple(range(-len(normalized_shape), 0))
    centered = x - x.mean(dims, keepdim=True)
    out = centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


# ----------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class GaussianHead:
    """Diagonal Gaussian ``N(out, diag(exp(log_std))**2)`` with a learned, state-independent
    ``log_std`` (weight name ``log_std``, initialised to ``init_log_std``)."""

    act_dim: int
    init_log_std: float = 0.0

    @property
    def out_dim(self) -> int:
        return self.act_dim

    def init_params(self, dtype: torch.dtype) -> Params:
        return {"log_std": torch.full((self.act_dim,), self.init_log_std, dtype=dtype)}

    def stats(self, params: Params, out: Tensor) -> DistStats:
        """``{"mean": out, "log_std": [..., A]}`` (log_std broadcast over the batch)."""
        return {"mean": out, "log_std": params["log_std"].expand_as(out)}

    def log_prob(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``-1/2 sum_j [((a_j - mu_j) / sigma_j)**2 + 2 log sigma_j + log 2 pi]``."""
        log_std = stats["log_std"]
        z = (actions - stats["mean"]) * torch.exp(-log_std)
        return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * actions.shape[-1] * _LOG_2PI

    def kl(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_j [log(s1_j / s0_j) + (s0_j**2 + (m0_j - m1_j)**2) / (2 s1_j**2) - 1/2]``."""
        ls0, ls1 = old["log_std"], new["log_std"]
        diff = old["mean"] - new["mean"]
        ratio = (torch.exp(2.0 * ls0) + diff * diff) * torch.exp(-2.0 * ls1)
        return (ls1 - ls0 + 0.5 * ratio - 0.5).sum(-1)

    def entropy(self, stats: DistStats) -> Tensor:
        """``sum_j [log sigma_j + (1 + log 2 pi) / 2]``."""
        return (stats["log_std"] + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """``eps ~ N(0, I)``, ``[*batch_shape, act_dim]``."""
        return torch.randn((*batch_shape, self.act_dim), generator=generator)

    def act(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``a = mu + sigma * eps``; log-prob from ``eps`` directly."""
        mean, log_std = stats["mean"], stats["log_std"]
        eps = noise.to(mean)
        actions = mean + torch.exp(log_std) * eps
        log_probs = -0.5 * (eps * eps).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * _LOG_2PI
        return actions, log_probs


@dataclass(frozen=True)
class CategoricalHead:
    """Categorical over ``num_actions`` actions with the network's outputs as logits; actions
    are long. No weights of its own."""

    num_actions: int

    def __post_init__(self) -> None:
        if self.num_actions < 2:
            raise ValueError(
                f"categorical policy: num_actions must be >= 2, got {self.num_actions}"
            )

    @property
    def out_dim(self) -> int:
        return self.num_actions

    def init_params(self, dtype: torch.dtype) -> Params:
        return {}

    def stats(self, params: Params, out: Tensor) -> DistStats:
        """``{"log_probs": [..., num_actions]}``, the log-softmax of the logits ``out``."""
        return {"log_probs": torch.log_softmax(out, dim=-1)}

    def log_prob(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log p_a``, picked out of the normalised logits."""
        return stats["log_probs"].gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_a p0_a (log p0_a - log p1_a)``."""
        lp0 = old["log_probs"]
        return (torch.exp(lp0) * (lp0 - new["log_probs"])).sum(-1)

    def entropy(self, stats: DistStats) -> Tensor:
        """``-sum_a p_a log p_a``."""
        lp = stats["log_probs"]
        return -(torch.exp(lp) * lp).sum(-1)

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """``u ~ U[0, 1)``, ``[*batch_shape]``."""
        return torch.rand(batch_shape, generator=generator)

    def act(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse-CDF draw: the first action whose cumulative probability exceeds ``u``."""
        lp = stats["log_probs"]
        cdf = torch.cumsum(torch.exp(lp), dim=-1)
        u = noise.to(cdf).unsqueeze(-1) * cdf[..., -1:]  # cdf[-1] is 1 up to rounding
        actions = (cdf <= u).sum(-1).clamp(max=self.num_actions - 1)
        return actions, self.log_prob(stats, actions)


Head = GaussianHead | CategoricalHead


@dataclass(frozen=True)
class PolicySpec:
    """Everything that rebuilds a policy's architecture elsewhere (e.g. in a sampler worker):
    small and picklable; weights travel separately, as ``params``."""

    obs_dim: int
    head: Head
    network: NetworkSpec = field(default_factory=NetworkSpec)

    def build(self) -> Policy:
        return Policy(self)


# ----------------------------------------------------------------------------- policy


class Policy(nn.Module):
    """A network and a distribution head (see the module docstring), built from a
    :class:`PolicySpec`. The module's own weights are :meth:`init_params` of a generator
    seeded ``seed``; training code keeps its weights as a dict."""

    def __init__(self, spec: PolicySpec, *, seed: int = 0) -> None:
        super().__init__()
        self._spec = spec
        self.obs_dim = spec.obs_dim
        self.head = spec.head
        self.prefix = spec.network.prefix
        with torch.random.fork_rng(devices=[]):  # a factory's own init must not touch ours
            network = spec.network.build(spec.obs_dim, spec.head.out_dim)
        self.add_module(self.prefix[:-1], network)
        for name, value in spec.head.init_params(torch.float32).items():
            self.register_parameter(name, nn.Parameter(value))
        self.load_state_dict(self.init_params(torch.Generator().manual_seed(seed)), assign=True)

    def spec(self) -> PolicySpec:
        """What rebuilds this architecture (:meth:`PolicySpec.build`)."""
        return self._spec

    @property
    def network(self) -> nn.Module:
        """The network (registered under its weights' prefix, ``mlp`` or ``net``)."""
        module: nn.Module = getattr(self, self.prefix[:-1])
        return module

    def init_params(
        self, generator: torch.Generator, *, dtype: torch.dtype = torch.float32
    ) -> Params:
        """Fresh initial weights, a deterministic function of the generator's state: the
        default MLP's Glorot init drawn from it; a user network's own init, run under a seed
        drawn from it (the global RNG left as it was)."""
        if isinstance(self.network, MLPNetwork):
            net = self.network.glorot_params(generator, dtype)
        else:
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fresh = self._spec.network.build(self.obs_dim, self.head.out_dim)
            net = {k: v.detach().to(dtype) for k, v in fresh.named_parameters()}
        params = {self.prefix + k: v for k, v in net.items()}
        return {**params, **self.head.init_params(dtype)}

    def params(self) -> Params:
        """A detached copy of the module's weights (the initial ``theta``)."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def network_output(self, params: Params, obs: Tensor) -> Tensor:
        """The network's output ``[..., out_dim]`` for ``obs [..., obs_dim]`` with the
        network's weights in ``params`` (:func:`torch.func.functional_call`; a user network's
        layer norms as elementwise ops, see :class:`CompositeLayerNorm`)."""
        n = len(self.prefix)
        weights = {k[n:]: v for k, v in params.items() if k.startswith(self.prefix)}
        if isinstance(self.network, MLPNetwork):
            out: Tensor = torch.func.functional_call(self.network, weights, (obs,))
            return out
        with CompositeLayerNorm():
            out = torch.func.functional_call(self.network, weights, (obs,))
        return out

    def dist_stats(self, params: Params, obs: Tensor) -> DistStats:
        """Statistics of the action distribution at each observation: the one way to the
        policy's outputs."""
        return self.head.stats(params, self.network_output(params, obs))

    # Closed forms of statistics (the head's).

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log pi(a | s)`` of ``actions`` under the distribution ``stats``, shape ``[...]``."""
        return self.head.log_prob(stats, actions)

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """Closed-form ``KL(old || new)`` per observation, shape ``[...]``."""
        return self.head.kl(old, new)

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """Closed-form entropy per observation, shape ``[...]``."""
        return self.head.entropy(stats)

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """The randomness of ``batch_shape`` action draws, for :meth:`act_from_stats`: drawn
        apart from the policy's outputs, so a sampler can draw a whole rollout's noise at once
        and any split of the sub-envs over workers acts identically."""
        return self.head.draw_noise(batch_shape, generator)

    def act_from_stats(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Actions (and their log-probabilities) from ``stats`` and :meth:`draw_noise`'s noise."""
        return self.head.act(stats, noise)

    def sample_from_stats(
        self, stats: DistStats, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw actions from ``stats``; returns ``(actions, log_probs)``."""
        batch_shape = next(iter(stats.values())).shape[:-1]
        return self.act_from_stats(stats, self.draw_noise(tuple(batch_shape), generator))

    # Functional API on weights.

    def forward(self, obs: Tensor) -> DistStats:
        """Distribution statistics with the module's own (initial) weights."""
        return self.dist_stats(dict(self.named_parameters()), obs)

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """``log pi_params(a | s)`` for each step, shape ``obs.shape[:-1]``."""
        return self.log_prob_from_stats(self.dist_stats(params, obs), actions)

    def kl(self, old_stats: DistStats, params: Params, obs: Tensor) -> Tensor:
        """``KL(old || pi_params(.|s))`` per observation; ``old_stats`` from :meth:`dist_stats`."""
        return self.kl_from_stats(old_stats, self.dist_stats(params, obs))

    def entropy(self, params: Params, obs: Tensor) -> Tensor:
        """Entropy of ``pi_params(. | s)`` per observation."""
        return self.entropy_from_stats(self.dist_stats(params, obs))

    def detached_stats(self, params: Params, obs: Tensor) -> DistStats:
        """:meth:`dist_stats` cut from the graph (the 'old' policy of a KL)."""
        return {k: v.detach() for k, v in self.dist_stats(params, obs).items()}

    def sample(
        self, params: Params, obs: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Sample actions (no gradient); returns ``(actions, log_probs)``, batch shape ``[...]``."""
        with torch.no_grad():
            return self.sample_from_stats(self.dist_stats(params, obs), generator)

    def sample_per_task(
        self, task_params: Params, obs: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Sample with one weight set per task: ``task_params`` have a leading task axis ``K``
        (as returned by :func:`metarl.rl.maml_trpo.adapt_tasks`) and ``obs`` is
        ``[K, E, obs_dim]``."""
        with torch.no_grad():
            stats = torch.func.vmap(self.dist_stats)(task_params, obs)
            return self.sample_from_stats(stats, generator)

    def act(self, params: Params, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`sample` with given noise (from :meth:`draw_noise`, batch shape of ``obs``)."""
        with torch.no_grad():
            return self.act_from_stats(self.dist_stats(params, obs), noise)

    def act_per_task(
        self, task_params: Params, obs: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample_per_task` with given noise (batch shape ``[K, E]``)."""
        with torch.no_grad():
            stats = torch.func.vmap(self.dist_stats)(task_params, obs)
            return self.act_from_stats(stats, noise)


def GaussianMLPPolicy(
    *,
    obs_dim: int,
    act_dim: int,
    hidden_sizes: tuple[int, ...] = (100, 100),
    activation: str = "relu",
    init_log_std: float = 0.0,
    seed: int = 0,
) -> Policy:
    """A Gaussian policy on the default MLP (the paper's)."""
    network = NetworkSpec(hidden_sizes=tuple(hidden_sizes), activation=activation)
    head = GaussianHead(act_dim=act_dim, init_log_std=float(init_log_std))
    return Policy(PolicySpec(obs_dim=obs_dim, head=head, network=network), seed=seed)


def CategoricalMLPPolicy(
    *,
    obs_dim: int,
    num_actions: int,
    hidden_sizes: tuple[int, ...] = (100, 100),
    activation: str = "relu",
    seed: int = 0,
) -> Policy:
    """A categorical policy on the default MLP."""
    network = NetworkSpec(hidden_sizes=tuple(hidden_sizes), activation=activation)
    head = CategoricalHead(num_actions=num_actions)
    return Policy(PolicySpec(obs_dim=obs_dim, head=head, network=network), seed=seed)
