"""The one inner loop of MAML, shared by the RL and supervised paths.

Weights are plain ``dict[str, Tensor]``; a loss function maps such a dict to a scalar.
``adapt`` takes gradient steps with :func:`torch.func.grad`, so it composes with
:func:`torch.func.vmap` (one call adapts a whole batch of tasks) and with ordinary autograd
around it (the outer, meta-level gradient flows back through the inner steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Params = dict[str, Tensor]
LossFn = Callable[[Params], Tensor]


def inner_lrs(lr: float | Sequence[float], steps: int) -> list[float]:
    """Expand ``lr`` to one learning rate per inner step, with a clear error on a mismatch."""
    if steps < 0:
        raise ValueError(f"adapt: steps must be >= 0, got {steps}")
    if isinstance(lr, int | float):
        lrs = [float(lr)] * steps
    else:
        lrs = [float(x) for x in lr]
        if len(lrs) != steps:
            raise ValueError(
                f"adapt: got {len(lrs)} learning rates {lrs} for {steps} steps; "
                "give one float or exactly one per step"
            )
    for value in lrs:
        if not value > 0.0:
            raise ValueError(f"adapt: learning rates must be > 0, got {value}")
    return lrs


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    """One plain gradient step ``p - lr * g`` on every weight (a new dict; nothing in place)."""
    return {name: p - lr * grads[name] for name, p in params.items()}


def adapt(
    params: Params,
    loss_fn: LossFn,
    *,
    steps: int = 1,
    lr: float | Sequence[float] = 0.1,
    first_order: bool = False,
) -> Params:
    """Take ``steps`` gradient steps on ``loss_fn`` starting at ``params``.

    Args:
        params: the meta-parameters (theta). They are not modified.
        loss_fn: maps a weight dict to a scalar loss on the task's support data.
        steps: number of inner gradient steps (0 returns ``params`` unchanged).
        lr: the inner learning rate alpha, or one per step.
        first_order: if True, the inner gradients are treated as constants, so the
            meta-gradient through the result drops the second-order terms (FOMAML).
            If False (default) the graph is kept and the meta-gradient is exact.

    Returns:
        The adapted weights theta' as a new dict, differentiable w.r.t. ``params``.
    """
    lrs = inner_lrs(lr, steps)
    grad_fn = torch.func.grad(loss_fn)
    for step_lr in lrs:
        grads: Params = grad_fn(params)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        params = sgd_step(params, grads, step_lr)
    return params
