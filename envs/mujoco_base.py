"""What the MuJoCo task envs share: model loading without ``settotalmass``, pickling, the hook.

MuJoCo 4 deprecates the MJCF compiler attribute ``settotalmass`` (Gymnasium's half_cheetah.xml
uses ``settotalmass="14"``): compiling such a model makes MuJoCo's C warning handler print
"WARNING: compiler attribute 'settotalmass' is deprecated ..." to stderr (and append it to
MUJOCO_LOG.TXT in the working directory) on every env made. :func:`compile_model` removes the
cause instead of hiding the message: it compiles the model with the attribute unset and then
applies the same scaling with ``mj_setTotalmass`` + ``mj_setConst``, the replacement MuJoCo's
message recommends. The result equals the model Gymnasium would load, array for array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.mujoco_env import expand_model_path
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from .tasks import TaskEnvMixin, TaskVectorEnvMixin

__all__ = ["MujocoTaskEnvMixin", "MujocoTaskVectorEnv", "compile_model"]

TaskT = TypeVar("TaskT")


def compile_model(xml_path: str) -> mujoco.MjModel:
    """Compile an MJCF file; a ``settotalmass`` in it is applied after compiling, silently."""
    spec = mujoco.MjSpec.from_file(xml_path)
    total_mass = spec.compiler.settotalmass
    spec.compiler.settotalmass = -1.0
    model = spec.compile()
    if total_mass > 0:
        mujoco.mj_setTotalmass(model, total_mass)
        mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


class MujocoTaskEnvMixin(TaskEnvMixin[TaskT]):
    """Task protocol for Gymnasium's v5 MuJoCo envs (put it before the v5 class in the bases).

    Subclasses call :meth:`_init_task_env` from ``__init__``; the v5 env's own ``step`` calls
    our ``_get_rew``. Pickling rebuilds the env from its constructor arguments (EzPickle) and
    the current task.
    """

    fullpath: str
    width: int
    height: int

    def _init_task_env(self, task: TaskT | None, defaults: dict[str, Any], **kwargs: Any) -> None:
        self.set_task(self.default_task if task is None else task)
        super().__init__(**{**defaults, **kwargs})
        utils.EzPickle.__init__(self, task=task, **kwargs)  # type: ignore[arg-type]

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        """As ``MujocoEnv._initialize_simulation``, with :func:`compile_model`."""
        model = compile_model(self.fullpath)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = utils.EzPickle.__getstate__(self)  # type: ignore[arg-type]
        kwargs = {**state["_ezpickle_kwargs"], "task": self._task}
        return {**state, "_ezpickle_kwargs": kwargs}


FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


class MujocoTaskVectorEnv(TaskVectorEnvMixin[TaskT], VectorEnv[FloatArray, Any, NDArray[Any]]):
    """``num_envs`` copies of a v5 MuJoCo task env stepped by one object in one process.

    Each sub-env keeps its own ``MjData`` (so its constraint-solver warm start carries over
    from step to step exactly as in the single env); one step is a tight loop of
    ``mj_step(model, data, nstep=frame_skip)`` calls (each followed by
    ``mj_rnePostConstraint`` where ``post_constraint`` is set: the single env's
    ``do_simulation`` calls it, and an env that observes contact forces ``cfrc_ext`` needs it),
    after which the ``state_fields`` of all sub-envs are copied into ``[num_envs, ...]`` arrays
    and observations, rewards and terminations are computed from them with numpy. None of the
    single env's other per-step Python (wrappers, checks, ``info`` dicts) runs, so one core
    steps its sub-envs faster than the single env (``benchmarks/env_speed.py``) while giving
    bitwise the single env's observations, rewards and end flags. ``info`` is empty.

    Resets draw the v5 reset noise from each sub-env's own generator (seeded as
    ``Env.reset(seed=...)`` seeds one), time limits truncate at ``max_episode_steps``, and
    autoresets follow Gymnasium's NEXT_STEP mode: the step after an episode ends ignores that
    sub-env's action and returns its reset observation with reward 0. Tasks are set per
    sub-env with ``set_attr("task", tasks)`` (one each, or one for all).

    Subclasses set ``single_env`` (the single env class, for its task distribution and model)
    and implement :meth:`_observations` and :meth:`_rewards`; they may override
    :meth:`_x_positions` (where the forward velocity is measured) and :meth:`_terminations`.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium's convention)
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }
    single_env: type[TaskEnvMixin[Any]]
    xml_file: str
    post_constraint: ClassVar[bool] = False
    """Call ``mj_rnePostConstraint`` after each step (needed to read ``cfrc_ext``)."""
    state_fields: ClassVar[tuple[str, ...]] = ("qpos", "qvel")
    """The ``MjData`` fields copied into ``self._state`` after every step and reset."""
    _state: dict[str, FloatArray]
    _qpos: FloatArray
    _qvel: FloatArray

    def __init__(
        self,
        num_envs: int,
        *,
        max_episode_steps: int,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
        tasks: Sequence[TaskT] | None = None,
        render_mode: None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"{type(self).__name__} has no render modes, got {render_mode!r}")
        if num_envs < 1 or max_episode_steps < 1 or frame_skip < 1:
            raise ValueError(
                f"{type(self).__name__}: num_envs, max_episode_steps and frame_skip must be "
                f">= 1, got {num_envs}, {max_episode_steps}, {frame_skip}"
            )
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.frame_skip = frame_skip
        self.reset_noise_scale = reset_noise_scale
        self.model = compile_model(expand_model_path(self.xml_file))
        self.dt = float(self.model.opt.timestep) * frame_skip
        self._datas = [mujoco.MjData(self.model) for _ in range(num_envs)]
        self._ctrl = [d.ctrl for d in self._datas]
        self._views = {f: [getattr(d, f) for d in self._datas] for f in self.state_fields}
        self.init_qpos = self._datas[0].qpos.copy()
        self.init_qvel = self._datas[0].qvel.copy()
        self._gather()
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        obs_dim = self._observations(self._qpos, self._qvel).shape[1]
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        bounds = self.model.actuator_ctrlrange.copy().astype(np.float32)
        self.single_action_space = spaces.Box(bounds[:, 0], bounds[:, 1], dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._tasks: tuple[TaskT, ...] = ()
        default: TaskT = self.single_env.default_task
        self.set_tasks([default] * num_envs if tasks is None else tasks)

    # ---------------------------------------------------------------- tasks

    def set_tasks(self, tasks: Sequence[TaskT]) -> None:
        """Give sub-env ``i`` the task ``tasks[i]`` (from its next step on)."""
        self._check_task_count(tasks)
        name = self.single_env.__name__.removesuffix("Env")
        distribution = self.single_env.task_distribution
        checked = tuple(distribution.validate(name, task) for task in tasks)
        self._apply_tasks(checked)
        self._tasks = checked

    def _apply_tasks(self, tasks: tuple[TaskT, ...]) -> None:
        """Hook: cache the tasks' numbers for :meth:`_rewards`."""

    # ---------------------------------------------------------------- stepping

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Reset all sub-envs, or those in ``options["reset_mask"]``. ``seed``: one per
        sub-env, or an int ``s`` seeding sub-env ``i`` with ``s + i`` (as Gymnasium's vector
        envs); an unseeded sub-env continues its generator."""
        mask = np.ones(self.num_envs, dtype=np.bool_)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=np.bool_)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if seed is None or isinstance(seed, int):
            seeds: list[int | None] = [
                None if seed is None else seed + i for i in range(self.num_envs)
            ]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset: {len(seeds)} seeds for {self.num_envs} sub-envs")
        for i in np.flatnonzero(mask):
            self._reset_one(int(i), seeds[i])
        self._gather()
        return self._observations(self._qpos, self._qvel), {}

    def _reset_one(self, i: int, seed: int | None) -> None:
        """As ``MujocoEnv.reset`` + the v5 ``reset_model``: noise on the initial state."""
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        rng = self._rngs[i]
        assert rng is not None
        data, scale = self._datas[i], self.reset_noise_scale
        mujoco.mj_resetData(self.model, data)
        data.qpos[:] = self.init_qpos + rng.uniform(low=-scale, high=scale, size=self.model.nq)
        data.qvel[:] = self.init_qvel + scale * rng.standard_normal(self.model.nv)
        mujoco.mj_forward(self.model, data)
        self._steps[i] = 0
        self._autoreset[i] = False

    def step(
        self, actions: Any
    ) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray, dict[str, Any]]:
        """Step every sub-env ``frame_skip`` MuJoCo steps with its action (autoresetting those
        whose episode ended on the previous step)."""
        return self.step_active(actions, np.ones(self.num_envs, dtype=np.bool_))

    def step_active(
        self, actions: Any, active: Any
    ) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray, dict[str, Any]]:
        """:meth:`step` for the sub-envs where ``active`` is true; the others are left as they
        are (not simulated, not autoreset, their step count kept), and their rows of the
        result are their current observation, reward 0 and both end flags false. The active
        sub-envs' rows are bitwise those of :meth:`step` (a sampler whose episode has ended in a
        sub-env need not simulate it on)."""
        actions = np.asarray(actions)
        if actions.shape != self.action_space.shape:
            raise ValueError(
                f"{type(self).__name__}.step: actions must have shape "
                f"{self.action_space.shape}, got {actions.shape}"
            )
        active = np.asarray(active, dtype=np.bool_)
        if active.shape != (self.num_envs,):
            raise ValueError(f"step_active: active must have shape ({self.num_envs},)")
        x_before = self._x_positions().copy()
        resetting = self._autoreset & active
        for i in np.flatnonzero(resetting):
            self._reset_one(int(i), None)
        stepping = active & ~resetting
        if stepping.all():
            self._simulate(self._ctrl, self._datas, actions)
        else:
            rows = np.flatnonzero(stepping)
            ctrls, datas = [self._ctrl[i] for i in rows], [self._datas[i] for i in rows]
            self._simulate(ctrls, datas, actions[rows])
        self._gather()
        x_velocity = (self._x_positions() - x_before) / self.dt
        rewards = self._rewards(x_velocity, actions)
        terminated = self._terminations()
        self._steps += stepping
        truncated = self._steps >= self.max_episode_steps
        quiet = ~stepping  # reset on this step, or left alone
        if quiet.any():
            rewards[quiet] = 0.0
            terminated[quiet] = False
            truncated[quiet] = False
        self._autoreset[active] = (terminated | truncated)[active]
        return self._observations(self._qpos, self._qvel), rewards, terminated, truncated, {}

    def _simulate(
        self, ctrls: Sequence[FloatArray], datas: Sequence[mujoco.MjData], actions: NDArray[Any]
    ) -> None:
        """As ``MujocoEnv.do_simulation`` for each of these sub-envs: the one hot loop."""
        model, nstep, step = self.model, self.frame_skip, mujoco.mj_step
        if self.post_constraint:
            post = mujoco.mj_rnePostConstraint
            for ctrl, data, action in zip(ctrls, datas, actions, strict=True):
                ctrl[:] = action
                step(model, data, nstep)
                post(model, data)
        else:
            for ctrl, data, action in zip(ctrls, datas, actions, strict=True):
                ctrl[:] = action
                step(model, data, nstep)

    def _gather(self) -> None:
        """Copy each of ``state_fields`` of all sub-envs into ``self._state[field]``."""
        self._state = {field: np.array(views) for field, views in self._views.items()}
        self._qpos = self._state["qpos"]
        self._qvel = self._state["qvel"]

    def _x_positions(self) -> FloatArray:
        """``[num_envs]`` x positions whose change over ``dt`` is the forward velocity."""
        return self._qpos[:, 0]

    def _terminations(self) -> BoolArray:
        """``[num_envs]`` terminations after a step (by default none)."""
        return np.zeros(self.num_envs, dtype=np.bool_)

    def _observations(self, qpos: FloatArray, qvel: FloatArray) -> FloatArray:
        """``[num_envs, obs_dim]`` observations from positions and velocities."""
        raise NotImplementedError

    def _rewards(self, x_velocity: FloatArray, actions: NDArray[Any]) -> FloatArray:
        """``[num_envs]`` rewards from the torso's x velocity and the actions."""
        raise NotImplementedError
