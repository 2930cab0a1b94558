"""First-order optimizers' state in checkpoints (the supervised learners, and the RL baselines
with ``optimizer: adam``)."""

from __future__ import annotations

from typing import Any

import torch

from metarl.adaptation import Params


def restore_weights_and_optimizer(
    params: Params, optimizer: torch.optim.Optimizer, state: dict[str, Any], lr: float
) -> None:
    """Load a checkpoint's weights (in place, so that ``optimizer`` keeps updating them) and
    optimizer state, then set the learning rate to ``lr``, the config's: it may change on resume
    (e.g. lowered for the last iterations), the optimizer's moments are kept."""
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = lr
