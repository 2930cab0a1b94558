"""Gaussian and categorical MLP policies, used functionally on ``dict[str, Tensor]`` weights.

The modules only hold the architecture and a set of initial weights; every method takes the
weights explicitly (``params``), so the same policy acts with meta-parameters ``theta`` or with
adapted ``theta_i``, and everything composes with ``torch.func.grad`` / ``torch.func.vmap``
(``sample`` excepted: it draws from a ``torch.Generator`` and is meant for the sampler, outside
any transform). Distributions are written in closed form (no ``torch.distributions``).

A distribution is summarised by its *statistics* (``DistStats``, a dict of tensors with the
batch shape in front): ``{"mean", "log_std"}`` for the Gaussian, ``{"log_probs"}`` (normalised
logits) for the categorical. Detached statistics of an old policy give ``KL(old || new)``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
DistStats = dict[str, Tensor]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}
_LOG_2PI = math.log(2.0 * math.pi)


class MLPPolicy(nn.Module):
    """Shared MLP body: ``obs -> hidden layers (activation) -> linear head of size out_dim``.

    Weight names follow ``nn.Sequential``: ``mlp.0.weight``, ``mlp.0.bias``, ``mlp.2.weight``,
    ... (activations sit at the odd indices). Initial weights: Glorot-uniform matrices, zero
    biases (as rllab / the MAML code), drawn from ``torch.Generator().manual_seed(seed)``.
    """

    def __init__(
        self,
        *,
        obs_dim: int,
        out_dim: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"policy activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        sizes = (obs_dim, *hidden_sizes, out_dim)
        if any(s < 1 for s in sizes):
            raise ValueError(f"policy layer sizes must be >= 1, got {sizes}")
        self.obs_dim = obs_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            if i > 0:
                layers.append(nn.ReLU() if activation == "relu" else nn.Tanh())
            layers.append(nn.Linear(n_in, n_out, device="meta"))
        self.mlp = nn.Sequential(*layers)
        self._linear_names = [f"mlp.{2 * i}" for i in range(len(sizes) - 1)]
        self._sizes = sizes

    def _load_initial(self, seed: int) -> None:
        """Fill the module's weights from ``init_params`` with a generator seeded ``seed``."""
        self.load_state_dict(self.init_params(torch.Generator().manual_seed(seed)), assign=True)

    def init_params(
        self, generator: torch.Generator, *, dtype: torch.dtype = torch.float32
    ) -> Params:
        """Fresh initial weights, a deterministic function of the generator's state."""
        params: Params = {}
        for name, n_in, n_out in zip(
            self._linear_names, self._sizes[:-1], self._sizes[1:], strict=True
        ):
            bound = math.sqrt(6.0 / (n_in + n_out))
            w = torch.rand(n_out, n_in, generator=generator) * (2.0 * bound) - bound
            params[f"{name}.weight"] = w.to(dtype)
            params[f"{name}.bias"] = torch.zeros(n_out, dtype=dtype)
        params.update(self._extra_init(dtype))
        return params

    def _extra_init(self, dtype: torch.dtype) -> Params:
        """Weights beyond the MLP (e.g. the Gaussian log-std)."""
        return {}

    def params(self) -> Params:
        """A detached copy of the module's weights (the initial ``theta``)."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def body(self, params: Params, obs: Tensor) -> Tensor:
        """The MLP output ``[..., out_dim]`` for ``obs [..., obs_dim]`` with weights ``params``."""
        x = obs
        last = len(self._linear_names) - 1
        for i, name in enumerate(self._linear_names):
            x = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
            if i < last:
                x = self._act(x)
        return x

    # Distribution interface (closed forms, implemented by the subclasses).

    def dist_stats(self, params: Params, obs: Tensor) -> DistStats:
        """Statistics of the action distribution at each observation."""
        raise NotImplementedError

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log pi(a | s)`` of ``actions`` under the distribution ``stats``, shape ``[...]``."""
        raise NotImplementedError

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """Closed-form ``KL(old || new)`` per observation, shape ``[...]``."""
        raise NotImplementedError

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """Closed-form entropy per observation, shape ``[...]``."""
        raise NotImplementedError

    def sample_from_stats(
        self, stats: DistStats, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw actions from ``stats``; returns ``(actions, log_probs)``."""
        raise NotImplementedError

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
        (as returned by :func:`metarl.maml_rl.adapt_tasks`) and ``obs`` is ``[K, E, obs_dim]``."""
        with torch.no_grad():
            stats = torch.func.vmap(self.dist_stats)(task_params, obs)
            return self.sample_from_stats(stats, generator)


class GaussianMLPPolicy(MLPPolicy):
    """Diagonal Gaussian ``N(mu_theta(s), diag(exp(log_std))**2)`` with a learned,
    state-independent ``log_std`` (weight name ``log_std``, initialised to ``init_log_std``)."""

    def __init__(
        self,
        *,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
        init_log_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            obs_dim=obs_dim, out_dim=act_dim, hidden_sizes=hidden_sizes, activation=activation
        )
        self.act_dim = act_dim
        self.init_log_std = float(init_log_std)
        self.log_std = nn.Parameter(torch.empty(act_dim, device="meta"))
        self._load_initial(seed)

    def _extra_init(self, dtype: torch.dtype) -> Params:
        return {"log_std": torch.full((self.act_dim,), self.init_log_std, dtype=dtype)}

    def dist_stats(self, params: Params, obs: Tensor) -> DistStats:
        """``{"mean": [..., A], "log_std": [..., A]}`` (log_std broadcast over the batch)."""
        mean = self.body(params, obs)
        return {"mean": mean, "log_std": params["log_std"].expand_as(mean)}

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``-1/2 sum_j [((a_j - mu_j) / sigma_j)**2 + 2 log sigma_j + log 2 pi]``."""
        log_std = stats["log_std"]
        z = (actions - stats["mean"]) * torch.exp(-log_std)
        return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * actions.shape[-1] * _LOG_2PI

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_j [log(s1_j / s0_j) + (s0_j**2 + (m0_j - m1_j)**2) / (2 s1_j**2) - 1/2]``."""
        ls0, ls1 = old["log_std"], new["log_std"]
        diff = old["mean"] - new["mean"]
        ratio = (torch.exp(2.0 * ls0) + diff * diff) * torch.exp(-2.0 * ls1)
        return (ls1 - ls0 + 0.5 * ratio - 0.5).sum(-1)

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """``sum_j [log sigma_j + (1 + log 2 pi) / 2]``."""
        log_std = stats["log_std"]
        return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def sample_from_stats(
        self, stats: DistStats, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``a = mu + sigma * eps``, ``eps ~ N(0, I)``; log-prob from ``eps`` directly."""
        mean, log_std = stats["mean"], stats["log_std"]
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        actions = mean + torch.exp(log_std) * eps
        log_probs = -0.5 * (eps * eps).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * _LOG_2PI
        return actions, log_probs


class CategoricalMLPPolicy(MLPPolicy):
    """Categorical over ``num_actions`` actions with logits from the MLP; actions are long."""

    def __init__(
        self,
        *,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        if num_actions < 2:
            raise ValueError(f"CategoricalMLPPolicy: num_actions must be >= 2, got {num_actions}")
        super().__init__(
            obs_dim=obs_dim, out_dim=num_actions, hidden_sizes=hidden_sizes, activation=activation
        )
        self.num_actions = num_actions
        self._load_initial(seed)

    def dist_stats(self, params: Params, obs: Tensor) -> DistStats:
        """``{"log_probs": [..., num_actions]}``, the log-softmax of the logits."""
        return {"log_probs": torch.log_softmax(self.body(params, obs), dim=-1)}

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log p_a``, picked out of the normalised logits."""
        return stats["log_probs"].gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_a p0_a (log p0_a - log p1_a)``."""
        lp0 = old["log_probs"]
        return (torch.exp(lp0) * (lp0 - new["log_probs"])).sum(-1)

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """``-sum_a p_a log p_a``."""
        lp = stats["log_probs"]
        return -(torch.exp(lp) * lp).sum(-1)

    def sample_from_stats(
        self, stats: DistStats, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw with ``torch.multinomial`` from ``p = exp(log_probs)``."""
        lp = stats["log_probs"]
        flat = torch.exp(lp.reshape(-1, lp.shape[-1]))
        actions = torch.multinomial(flat, 1, generator=generator).reshape(lp.shape[:-1])
        return actions, self.log_prob_from_stats(stats, actions)
