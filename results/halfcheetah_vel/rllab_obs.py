"""HalfCheetahVel with rllab's 20-dimensional observation, the paper's: v5's 17 numbers
(``qpos[1:]``, ``qvel``) followed by the torso's centre of mass (x, y, z; MuJoCo's
``subtree_com`` of the torso, which rllab's ``get_body_com("torso")`` read). Everything else is
``metarl/HalfCheetahVel-v0``'s. Registered as ``rllabobs/HalfCheetahVel-v0`` (single and batched
envs, the same episodes) for ``--set env.id=results/halfcheetah_vel/rllab_obs.py:rllabobs/
HalfCheetahVel-v0``; with ``--set env.kwargs.frame_skip=1`` it steps at the paper's 0.01 s."""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from metarl.envs.half_cheetah import HalfCheetahVelEnv, HalfCheetahVelVectorEnv

TORSO = 1  # body 0 is the world


class RllabObsHalfCheetahVelEnv(HalfCheetahVelEnv):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.observation_space = spaces.Box(-np.inf, np.inf, (20,), np.float64)

    def _get_obs(self) -> Any:
        return np.concatenate([super()._get_obs(), self.data.subtree_com[TORSO]])


class RllabObsHalfCheetahVelVectorEnv(HalfCheetahVelVectorEnv):
    single_env = RllabObsHalfCheetahVelEnv
    state_fields = (*HalfCheetahVelVectorEnv.state_fields, "subtree_com")

    def _observations(self, qpos: Any, qvel: Any) -> Any:
        com = self._state["subtree_com"][:, TORSO, :]
        return np.concatenate([qpos[:, 1:], qvel, com], axis=1)


gym.register(
    id="rllabobs/HalfCheetahVel-v0",
    entry_point=RllabObsHalfCheetahVelEnv,
    vector_entry_point=RllabObsHalfCheetahVelVectorEnv,
    max_episode_steps=200,
)
