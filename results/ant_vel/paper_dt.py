"""AntVel stepped at the paper's time step: rllab's ant advanced its model (time step 0.02 s) one
step per env step, Gymnasium's Ant-v5 five steps of 0.01 s (0.05 s per env step). With
``frame_skip=2`` on v5's model an env step is 0.02 s, as in the paper; 200 steps are 4 s.
Registered as ``paperdt/AntVel-v0`` (single and batched envs) for
``--set env.id=results/ant_vel/paper_dt.py:paperdt/AntVel-v0``, as the runs here were started;
``metarl/AntVel-v0`` with ``env.kwargs: {frame_skip: 2}`` (the Ant configs' setting) is the
same env."""

import gymnasium as gym

gym.register(
    id="paperdt/AntVel-v0",
    entry_point="metarl.envs.ant:AntVelEnv",
    vector_entry_point="metarl.envs.ant:AntVelVectorEnv",
    max_episode_steps=200,
    kwargs={"frame_skip": 2},
)
