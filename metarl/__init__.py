"""metarl: gradient-based meta-learning (MAML) for reinforcement learning and supervised tasks.

The public API: :func:`adapt` (the one inner loop), and :func:`train`, :func:`evaluate`,
:func:`load_run`, :func:`load_policy` (:mod:`metarl.api`: what the ``metarl`` command does, as
functions returning :class:`Run`, :class:`~metarl.experiments.EvalResult` and
:class:`TrainedPolicy`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from metarl.adaptation import adapt

__all__ = [
    "Run",
    "TrainedPolicy",
    "adapt",
    "evaluate",
    "load_policy",
    "load_run",
    "train",
]
__version__ = "0.1.0"


def _load_envs() -> ModuleType:
    """The task envs as the package ``metarl.envs``, which registers them with Gymnasium.

    An installed wheel has them at ``metarl/envs/`` (pyproject's ``package-dir``), imported as
    usual. A source checkout (the editable install, or ``PYTHONPATH``) keeps them in the
    top-level ``envs/`` folder beside this package: that folder is loaded by its path under the
    name ``metarl.envs`` (its modules import each other relatively), so neither a user's own
    ``envs`` on ``sys.path`` nor another checkout's install can stand in for it. Why not the
    editable install's mapping alone: docs/layout.md."""
    name = f"{__name__}.envs"
    if name in sys.modules:
        return sys.modules[name]
    here = Path(__file__).resolve().parent
    source = here.parent / "envs" / "__init__.py"
    if (here / "envs" / "__init__.py").is_file() or not source.is_file():
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(
        name, source, submodule_search_locations=[str(source.parent)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {str(source)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# Last: the envs import metarl.tasks.
envs = _load_envs()

from metarl.api import Run, TrainedPolicy, evaluate, load_policy, load_run, train  # noqa: E402
