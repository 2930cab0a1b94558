"""Task environments of the MAML paper, registered with Gymnasium under the ``metarl/`` namespace.

This folder is the package ``metarl.envs`` (never a bare ``envs``, which a user's own folder of
that name could shadow; see docs/layout.md). ``import metarl`` registers them; then
``gymnasium.make("metarl/<Name>-v0")`` works, as does
``gymnasium.make("metarl.envs:metarl/<Name>-v0")`` without importing anything first. Its
modules import each other relatively, so they work under that name whichever way it is provided.

=========================  ===================  ===============================  =======
id                         task                 distribution                     horizon
=========================  ===================  ===============================  =======
metarl/Navigation2D-v0     NavigationTask       goal ~ U[-0.5, 0.5]^2            100
metarl/HalfCheetahVel-v0   VelocityTask         velocity ~ U[0, 2]               200
metarl/HalfCheetahDir-v0   DirectionTask        direction in {-1, +1}            200
metarl/AntVel-v0           VelocityTask         velocity ~ U[0, 3]               200
metarl/AntDir-v0           DirectionTask        direction in {-1, +1}            200
metarl/AntGoal-v0          GoalTask             goal ~ U[-3, 3]^2                200
=========================  ===================  ===============================  =======

Every id also registers a ``vector_entry_point``: ``gymnasium.make_vec(id, num_envs,
vectorization_mode="vector_entry_point")`` gives a batched vector env (one process, one task per
sub-env through ``set_attr("task", tasks)``) whose observations, rewards, terminations and
truncations equal ``num_envs`` single envs' bitwise, with Gymnasium's NEXT_STEP autoresets; the
sampler uses it by itself.
"""

from __future__ import annotations

import gymnasium

from .tasks import DirectionTask, GoalTask, NavigationTask, VelocityTask

__all__ = ["ENV_IDS", "DirectionTask", "GoalTask", "NavigationTask", "VelocityTask"]

NAMESPACE = "metarl"

_ENTRY_POINTS: dict[str, tuple[str, int]] = {
    "Navigation2D-v0": ("metarl.envs.navigation:Navigation2DEnv", 100),
    "HalfCheetahVel-v0": ("metarl.envs.half_cheetah:HalfCheetahVelEnv", 200),
    "HalfCheetahDir-v0": ("metarl.envs.half_cheetah:HalfCheetahDirEnv", 200),
    "AntVel-v0": ("metarl.envs.ant:AntVelEnv", 200),
    "AntDir-v0": ("metarl.envs.ant:AntDirEnv", 200),
    "AntGoal-v0": ("metarl.envs.ant:AntGoalEnv", 200),
}
_VECTOR_ENTRY_POINTS = {
    "Navigation2D-v0": "metarl.envs.navigation:Navigation2DVectorEnv",
    "HalfCheetahVel-v0": "metarl.envs.half_cheetah:HalfCheetahVelVectorEnv",
    "HalfCheetahDir-v0": "metarl.envs.half_cheetah:HalfCheetahDirVectorEnv",
    "AntVel-v0": "metarl.envs.ant:AntVelVectorEnv",
    "AntDir-v0": "metarl.envs.ant:AntDirVectorEnv",
    "AntGoal-v0": "metarl.envs.ant:AntGoalVectorEnv",
}

ENV_IDS: tuple[str, ...] = tuple(f"{NAMESPACE}/{name}" for name in _ENTRY_POINTS)
"""The ids of all task envs registered here."""


def _register_all() -> None:
    for name, (entry_point, horizon) in _ENTRY_POINTS.items():
        env_id = f"{NAMESPACE}/{name}"
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=_VECTOR_ENTRY_POINTS.get(name),
            max_episode_steps=horizon,
        )


_register_all()
