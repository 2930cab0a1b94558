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

from typing import Any, TypeVar

import mujoco
from gymnasium import utils

from envs.tasks import TaskEnvMixin

__all__ = ["MujocoTaskEnvMixin", "compile_model"]

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
