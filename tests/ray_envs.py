"""A task env for the Ray sampler tests: Navigation2D whose worker crashes or hangs at the 5th
step when a flag file asks it to (``$METARL_TEST_FLAG_DIR/die``, ``hang``: once, the first
worker to take the flag; ``always_die``: every time); and a policy whose outputs depend on the
shape of the call (:class:`ShapeSensitivePolicy`). Imported as ``ray_envs`` by the tests and
by the Ray workers (the test puts this folder on their PYTHONPATH)."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import gymnasium as gym
import torch
from metarl.envs.navigation import Navigation2DEnv
from torch import nn

from metarl.rl.policies import GaussianHead, NetworkSpec, Policy, PolicySpec

FLAG_DIR = "METARL_TEST_FLAG_DIR"
ENV_ID = "ray_envs:FlakyNavigation2D-v0"


class FlakyNavigation2DEnv(Navigation2DEnv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self._steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        self._steps += 1
        if self._steps == 5:
            _maybe_fail()
        return super().step(action)


def _maybe_fail() -> None:
    folder = os.environ.get(FLAG_DIR)
    if not folder:
        return
    if _take(os.path.join(folder, "die")) or os.path.exists(os.path.join(folder, "always_die")):
        os._exit(1)
    if _take(os.path.join(folder, "hang")):
        time.sleep(3600)


def _take(path: str) -> bool:
    """Remove the flag; only the one process that removed it acts on it."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


if "FlakyNavigation2D-v0" not in gym.registry:
    gym.register("FlakyNavigation2D-v0", entry_point=FlakyNavigation2DEnv, max_episode_steps=100)


class ShapeSensitiveMLP(nn.Module):
    """An MLP whose outputs move by ``1e-4 * (rows % 7 + position % 5)``: what a BLAS whose
    kernels (and rounding) depend on the row count of the call and a row's place in it does,
    as on some CPUs, made large enough to show in every episode."""

    def __init__(self, obs_dim: int, out_dim: int, hidden_sizes: tuple[int, ...]) -> None:
        super().__init__()
        sizes = (obs_dim, *hidden_sizes)
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], out_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(obs)
        if obs.dim() < 2:
            return out
        rows = obs.shape[-2]
        place = torch.arange(rows, dtype=out.dtype).unsqueeze(-1)
        return out + 1e-4 * (rows % 7 + place % 5)


def ShapeSensitivePolicy(  # a constructor like GaussianMLPPolicy's
    *, obs_dim: int, act_dim: int, hidden_sizes: tuple[int, ...], init_log_std: float = 0.0
) -> Policy:
    """A Gaussian policy on :class:`ShapeSensitiveMLP`, a user network (rebuilt in a Ray
    worker from its spec): samplers that act on differently shaped calls in different
    backends give other episodes with it."""
    network = NetworkSpec(
        factory="ray_envs:ShapeSensitiveMLP", kwargs={"hidden_sizes": tuple(hidden_sizes)}
    )
    head = GaussianHead(act_dim=act_dim, init_log_std=init_log_std)
    return Policy(PolicySpec(obs_dim=obs_dim, head=head, network=network))
