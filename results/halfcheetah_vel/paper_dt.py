"""HalfCheetahVel stepped at the paper's time step: rllab's half-cheetah advanced the simulation
one 0.01 s MuJoCo step per env step (200 steps = 2 s), Gymnasium's v5 five (200 steps = 10 s).
Registered as ``paperdt/HalfCheetahVel-v0`` (single and batched envs) for
``--set env.id=results/halfcheetah_vel/paper_dt.py:paperdt/HalfCheetahVel-v0``."""

import gymnasium as gym

gym.register(
    id="paperdt/HalfCheetahVel-v0",
    entry_point="metarl.envs.half_cheetah:HalfCheetahVelEnv",
    vector_entry_point="metarl.envs.half_cheetah:HalfCheetahVelVectorEnv",
    max_episode_steps=200,
    kwargs={"frame_skip": 1},
)
