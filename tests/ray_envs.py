"""A task env for the Ray sampler tests: Navigation2D whose worker crashes or hangs at the 5th
step when a flag file asks it to (``$METARL_TEST_FLAG_DIR/die``, ``hang``: once, the first
worker to take the flag; ``always_die``: every time); and a policy whose outputs depend on the
shape of the call (:class:`ShapeSensitivePolicy`). Imported as ``ray_envs`` by the tests and
by the Ray workers (the test puts this folder on their PYTHONPATH)."""

from __future__ import annotations

import os
import time
from typing import Any

import gymnasium as gym
import torch

from envs.navigation import Navigation2DEnv
from metarl.policies import GaussianMLPPolicy, Params, PolicySpec

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


class ShapeSensitivePolicy(GaussianMLPPolicy):
    """A Gaussian MLP policy whose means move by ``1e-4 * (rows % 7 + position % 5)``: what a
    BLAS whose kernels (and rounding) depend on the row count of the call and a row's place in
    it does, as on some CPUs, made large enough to show in every episode. Samplers that act on
    differently shaped calls in different backends give other episodes with it."""

    def body(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        out = super().body(params, obs)
        if obs.dim() < 2:
            return out
        rows = obs.shape[-2]
        place = torch.arange(rows, dtype=out.dtype).unsqueeze(-1)
        return out + 1e-4 * (rows % 7 + place % 5)

    def spec(self) -> PolicySpec:
        return PolicySpec(ShapeSensitivePolicy, super().spec().kwargs)
