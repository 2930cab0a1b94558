"""Action normalization as the MAML paper's code did it (rllab's ``normalize``).

The policy acts in ``[-1, 1]^d``; the env receives ``low + (a + 1) / 2 * (high - low)`` with
``a`` clipped to ``[-1, 1]`` first (the same as clipping the result to ``[low, high]``). For 2-D
navigation (bounds +-0.1) this scales the policy's actions by 0.1, so a unit-variance Gaussian
policy is not clipped on nearly every step; for HalfCheetah and Ant (bounds +-1) it changes
nothing. The env itself keeps its native spec.

Built on Gymnasium: the map is ``gymnasium.wrappers.utils.rescale_box``'s (what
``RescaleAction`` applies), a single env is wrapped in ``TransformAction``, a vector env in a
``VectorActionWrapper`` that applies the same map to the whole ``[N, d]`` batch at once. The map
is elementwise IEEE arithmetic (clip, subtract, divide), so it rounds every sub-env's action
exactly as the single env does: a batched vector env stays bitwise equal to its single envs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import TransformAction
from gymnasium.wrappers.utils import rescale_box

from metarl.rl.sampling.processes import step_active

__all__ = [
    "NormalizedVectorEnv",
    "check_normalizable",
    "normalize_actions",
    "normalize_vector_actions",
]


def check_normalizable(space: gym.Space[Any], env_id: str) -> bool:
    """Whether actions of ``space`` get rescaled: True for a bounded ``Box``, False for a
    discrete space (nothing to rescale). Any other space, or a ``Box`` with an infinite bound
    (which ``[-1, 1]`` cannot be mapped onto), is a ``ValueError`` saying so."""
    if isinstance(space, gym.spaces.Discrete):
        return False
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"{env_id}: cannot normalize actions of {space}: only a Box or a Discrete space "
            "(set env.normalize_actions=false)"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(
            f"{env_id}: cannot normalize actions to [-1, 1]: the action space {space} has an "
            "infinite bound (set env.normalize_actions=false)"
        )
    return True


class _ToBounds:
    """``[-1, 1]^d`` (clipped) onto ``space``'s bounds, elementwise; works on one action or a
    batch ``[N, d]`` alike."""

    def __init__(self, space: gym.spaces.Box) -> None:
        self.unit_box, _, self._backward = rescale_box(space, np.float32(-1.0), np.float32(1.0))
        self.dtype = space.dtype

    def __call__(self, action: Any) -> np.ndarray:
        unit = np.clip(np.asarray(action, dtype=self.dtype), -1.0, 1.0)
        return np.asarray(self._backward(unit), dtype=self.dtype)


def normalize_actions(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """``env`` acting in ``[-1, 1]^d`` (clipped there, then mapped affinely onto its bounds);
    a discrete-action env is returned as it is."""
    if not check_normalizable(env.action_space, _name(env)):
        return env
    to_bounds = _ToBounds(env.action_space)  # type: ignore[arg-type]
    return TransformAction(env, func=to_bounds, action_space=to_bounds.unit_box)


class NormalizedVectorEnv(gym.vector.VectorActionWrapper[Any, Any, Any, Any]):
    """A vector env acting in ``[-1, 1]^d`` per sub-env (:func:`normalize_actions`' map on the
    whole batch). ``set_attr`` / ``get_attr`` reach the wrapped env (e.g. ``"task"``)."""

    def __init__(self, env: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        super().__init__(env)
        self._to_bounds = _ToBounds(env.single_action_space)  # type: ignore[arg-type]
        self.single_action_space = self._to_bounds.unit_box
        self.action_space = batch_space(self._to_bounds.unit_box, env.num_envs)

    def actions(self, actions: Any) -> np.ndarray:
        return self._to_bounds(actions)

    def step_active(
        self, actions: Any, active: np.ndarray
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The wrapped env's ``step_active`` (or ``step``) with the mapped actions (see
        :func:`metarl.rl.sampling.processes.step_active`)."""
        return step_active(self.env, self.actions(actions), active)

    def set_attr(self, name: str, values: Sequence[Any]) -> None:
        self.env.set_attr(name, values)  # type: ignore[attr-defined]

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return tuple(self.env.get_attr(name))  # type: ignore[attr-defined]


def normalize_vector_actions(
    envs: gym.vector.VectorEnv[Any, Any, Any],
) -> gym.vector.VectorEnv[Any, Any, Any]:
    """The vector-env form of :func:`normalize_actions`."""
    if not check_normalizable(envs.single_action_space, _name(envs)):
        return envs
    return NormalizedVectorEnv(envs)


def _name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return str(getattr(spec, "id", None) or type(env).__name__)
