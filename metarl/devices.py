"""Where a learner computes: the config's ``device`` (``auto``, ``cpu`` or ``cuda``).

The learner (adaptation, the outer step, supervised meta-training, evaluation's fine-tuning)
runs on the device; environments step on the CPU. What crosses, and when: the weights go to
the sampler's CPU once per sampling call (:func:`to_cpu`), the episodes or data batches to the
device once per batch (:func:`to_device`); random draws stay on CPU generators, so a seed gives
the same tasks, data and actions on every device. Checkpoints hold CPU tensors only
(:func:`cpu_copy`) and load on any device.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from metarl.config import ConfigError

DeviceName = Literal["auto", "cpu", "cuda"]
T = TypeVar("T")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto``: CUDA if ``torch.cuda.is_available()``, else the CPU; ``cpu``; ``cuda``, where
    a machine without CUDA is a :class:`ConfigError` naming the config ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"config key '{key}': 'cuda', but CUDA is not available on this machine "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'auto' "
                "or 'cpu' (--device cpu)"
            )
        return torch.device("cuda")
    raise ConfigError(f"config key '{key}': {name!r} is not one of auto, cpu, cuda")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; timings need it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(params: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """``params`` on ``device`` (the same tensors where they are there already)."""
    return {name: value.to(device) for name, value in params.items()}


def to_cpu(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached ``params`` on the CPU, for a sampler to act with (no copy of CPU tensors)."""
    return {name: value.detach().to("cpu") for name, value in params.items()}


def cpu_copy(tree: T) -> T:
    """A copy of ``tree`` (tensors in dicts, lists and tuples, e.g. an optimizer's state) with
    every tensor detached and on the CPU: what a checkpoint holds."""
    value: Any = tree
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(cpu_copy(v) for v in value)  # type: ignore[return-value]
    return tree
