"""Trust-region policy optimisation (Schulman et al. 2015) on ``dict[str, Tensor]`` weights.

One step solves ``H x = g`` by conjugate gradient, where ``g`` is the gradient of the loss and
``H`` the Hessian of the KL constraint (plus ``damping * I``), scales the direction to the
trust-region boundary ``beta = sqrt(2 max_kl / x^T H x)`` and backtracks along ``-beta x`` until
the step lowers the loss and keeps ``KL <= max_kl``. Hessian-vector products come by central
finite differences of KL gradients (rllab's ``FiniteDifferenceHvp``, as in the MAML paper),
exactly by double backpropagation, or as a Gauss-Newton product ``J^T F J v`` supplied by the
caller (exact at the old weights, where the KL's gradient in the policy outputs vanishes).

Callers with faster routines than autograd on ``loss_fn`` / ``kl_fn`` (e.g. the
meta-derivatives of :class:`metarl.rl.maml_trpo.MetaObjective`) hand them over as
:class:`Derivatives`. The settings are the config's :class:`~metarl.config.TRPOConfig` itself.

Nothing here logs; :func:`trpo_step` returns a :class:`TRPOStats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from metarl.config import TRPOConfig

Params = dict[str, Tensor]
ScalarFn = Callable[[Params], Tensor]
LossKLFn = Callable[[Params], tuple[Tensor, Tensor]]
HVP = Callable[[Tensor], Tensor]
HVPMethod = Literal["finite_difference", "exact", "gauss_newton"]
HVP_METHODS: tuple[str, ...] = ("finite_difference", "exact", "gauss_newton")

DEFAULT_FD_BASE_EPS = 1.0
"""Default finite-difference scale: ``eps = 1 / |theta|``, a step of relative size
``|v| / |theta|**2`` (about 1e-3 for the paper's policy and CG's vectors). The paper's 1e-5
drowns the curvature of a ReLU meta-KL in float32: ``theta + eps v`` rounds away most of the
step, and at initialisation (zero biases) every episode's first observation, the origin, sits
exactly on the ReLU kinks, so the KL's gradient jumps at ``theta_old`` and a central difference
of it errs by ``jump / eps``. At the paper's size (benchmarks/maml_trpo_speed.py) 1.0 gives
products with cosine >= 0.99998 to the exact ones on the gradient, from initialisation on; for
a smooth (tanh) policy its truncation error is about 2e-5."""


@dataclass(frozen=True)
class Derivatives:
    """Routines :func:`trpo_step` uses instead of autograd on its ``loss_fn`` / ``kl_fn``
    (each optional; they must compute the same quantities)."""

    loss_grad: Callable[[Params], tuple[Tensor, Tensor]] | None = None
    """``params -> (loss_fn(params), flat gradient of loss_fn)``."""
    kl_grad: Callable[[Params], Tensor] | None = None
    """``params -> flat gradient of kl_fn`` (what the finite-difference HVP differences)."""
    gauss_newton: HVP | None = None
    """``v -> J^T F J v`` at the step's ``params``, without damping (``hvp="gauss_newton"``)."""


def flatten_params(params: Params) -> Tensor:
    """Concatenate all weights (in dict order) into one flat vector."""
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten_params(flat: Tensor, like: Params) -> Params:
    """Split a flat vector back into a dict shaped like ``like`` (views of ``flat``)."""
    out: Params = {}
    offset = 0
    for name, p in like.items():
        n = p.numel()
        out[name] = flat[offset : offset + n].view_as(p)
        offset += n
    if offset != flat.numel():
        raise ValueError(
            f"unflatten_params: vector has {flat.numel()} entries, weights need {offset}"
        )
    return out


def leaf_params(params: Params) -> Params:
    """Detached copies of ``params`` that require grad (fresh leaves for autograd)."""
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def flat_grad(fn: ScalarFn, params: Params, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``(fn(params), flat gradient of fn)`` at ``params`` (differentiated at fresh leaves)."""
    theta = leaf_params(params)
    value = fn(theta)
    grads = torch.autograd.grad(value, list(theta.values()), create_graph=create_graph)
    return value, torch.cat([g.reshape(-1) for g in grads])


def _cg(hvp: HVP, b: Tensor, iters: int, residual_tol: float) -> tuple[Tensor, Tensor, int]:
    """Conjugate gradient for ``H x = b`` from ``x = 0``; returns ``(x, r, products)`` with the
    tracked residual ``r = b - H x`` (so ``H x = b - r`` comes for free) and the number of
    products used. A product with ``p^T H p <= 0`` or not finite (an estimated curvature that
    is not positive definite, e.g. finite differences along a direction the KL barely sees)
    ends the iteration at the last iterate instead of stepping with it."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = r @ r
    products = 0
    for _ in range(iters):
        if float(rdotr) < residual_tol:
            break
        z = hvp(p)
        products += 1
        curvature = p @ z
        if not (math.isfinite(float(curvature)) and float(curvature) > 0.0):
            break
        alpha = rdotr / curvature
        x = x + alpha * p
        r = r - alpha * z
        new_rdotr = r @ r
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x, r, products


def conjugate_gradient(
    hvp: HVP, b: Tensor, *, iters: int = 10, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``H x = b`` for symmetric positive-definite ``H`` given only
    ``v -> H v``, with at most ``iters`` products; stops once ``|r|**2 < residual_tol``, or
    at the last iterate when a product shows curvature ``p^T H p <= 0`` or not finite."""
    return _cg(hvp, b, iters, residual_tol)[0]


def hvp_finite_difference(
    grad_fn: Callable[[Params], Tensor],
    params: Params,
    v: Tensor,
    *,
    base_eps: float = DEFAULT_FD_BASE_EPS,
    damping: float = 0.0,
) -> Tensor:
    """``(g(theta + eps v) - g(theta - eps v)) / (2 eps) + damping v`` with
    ``eps = base_eps / (|theta| + 1e-8)`` (rllab's symmetric ``FiniteDifferenceHvp``).

    ``grad_fn`` maps weights to the flat gradient of the constraint (e.g. the meta-KL, which
    re-adapts from the same episodes at each perturbed ``theta``).
    """
    with torch.no_grad():
        theta = flatten_params(params)
        eps = base_eps / (float(theta.norm()) + 1e-8)
        plus = unflatten_params(theta + eps * v, params)
        minus = unflatten_params(theta - eps * v, params)
    return (grad_fn(plus) - grad_fn(minus)) / (2.0 * eps) + damping * v


def exact_hvp_closure(kl_fn: ScalarFn, params: Params, *, damping: float = 0.0) -> HVP:
    """``v -> H v + damping v`` by double backprop: the KL gradient (and its graph, through the
    second-order adaptation) is built once; each product is one backward of ``g(theta) . v``."""
    theta = leaf_params(params)
    kl = kl_fn(theta)
    leaves = list(theta.values())
    grads = torch.autograd.grad(kl, leaves, create_graph=True)
    g = torch.cat([x.reshape(-1) for x in grads])

    def hvp(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(g, leaves, grad_outputs=v, retain_graph=True)
        return torch.cat([x.reshape(-1) for x in hv]).detach() + damping * v

    return hvp


def hvp_exact(kl_fn: ScalarFn, params: Params, v: Tensor, *, damping: float = 0.0) -> Tensor:
    """One exact Hessian-vector product ``H v + damping v`` of ``kl_fn`` at ``params``."""
    return exact_hvp_closure(kl_fn, params, damping=damping)(v)


def make_hvp(
    kl_fn: ScalarFn,
    params: Params,
    *,
    method: HVPMethod,
    base_eps: float,
    damping: float,
    derivatives: Derivatives | None = None,
) -> HVP:
    """The ``v -> (H + damping I) v`` closure of the chosen ``method`` at ``params``."""
    d = derivatives or Derivatives()
    if method == "exact":
        return exact_hvp_closure(kl_fn, params, damping=damping)
    if method == "finite_difference":
        frozen = {name: p.detach() for name, p in params.items()}
        grad_fn = d.kl_grad or (lambda p: flat_grad(kl_fn, p)[1].detach())
        return lambda v: hvp_finite_difference(
            grad_fn, frozen, v, base_eps=base_eps, damping=damping
        )
    if method == "gauss_newton":
        gn = d.gauss_newton
        if gn is None:
            raise ValueError(
                "trpo: hvp='gauss_newton' needs a Gauss-Newton product (Derivatives.gauss_newton,"
                " which meta_trpo_step provides); use 'finite_difference' or 'exact' otherwise"
            )
        return lambda v: gn(v) + damping * v
    raise ValueError(f"trpo: hvp must be one of {', '.join(HVP_METHODS)}; got {method!r}")


@dataclass(frozen=True)
class TRPOStats:
    """What one :func:`trpo_step` did (plain numbers, for the trainer to log).

    Attributes:
        loss_before: loss at the old weights.
        loss_after: loss at the returned weights (``loss_before`` if the step was rejected).
        kl_after: KL(old || returned) (0.0 if rejected).
        step_accepted: whether the line search accepted a step; if not, the weights are unchanged.
        backtracks: shrinks tried before acceptance (``max_backtracks`` if rejected).
        step_fraction: accepted fraction of the full trust-region step (0.0 if rejected).
        grad_norm: norm of the loss gradient.
        step_norm: norm of the applied step (0.0 if rejected).
        initial_step_size: ``beta = sqrt(2 max_kl / x^T H x)`` (0.0 if undefined).
        cg_residual: norm of the final conjugate-gradient residual ``g - H x``.
        cg_products: Hessian-vector products conjugate gradient used: ``cg_iters`` unless the
            residual vanished first, or a product showed curvature ``<= 0`` or not finite
            (then the last iterate is the direction).
        step_rescale: with ``curvature_kl_fn``, the factor applied to ``initial_step_size``
            (already included in it) so that the KL on all the data along the step is
            ``max_kl`` under the quadratic model; 1.0 otherwise.
        tried_loss: loss of the last candidate the line search evaluated (``loss_before`` if
            none was: e.g. a direction with ``x^T H x <= 0``). Never NaN unless a loss was.
        tried_kl: KL of the last candidate the line search evaluated (0.0 if none was).
    """

    loss_before: float
    loss_after: float
    kl_after: float
    step_accepted: bool
    backtracks: int
    step_fraction: float
    grad_norm: float
    step_norm: float
    initial_step_size: float
    cg_residual: float
    cg_products: int
    step_rescale: float
    tried_loss: float
    tried_kl: float

    def as_dict(self) -> dict[str, float]:
        """The stats as a flat ``{name: float}`` dict."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LineSearchResult:
    """Outcome of :func:`backtracking_line_search`."""

    params: Params
    accepted: bool
    backtracks: int
    fraction: float
    loss: float
    kl: float


def backtracking_line_search(
    params: Params,
    full_step: Tensor,
    loss_kl_fn: LossKLFn,
    *,
    loss_before: float,
    max_kl: float,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
) -> LineSearchResult:
    """Try ``theta - ratio**n * full_step`` for ``n = 0 .. max_backtracks - 1`` (under no_grad)
    and accept the first with a finite loss ``< loss_before`` and ``KL <= max_kl``; if none
    qualifies, return the old ``params`` unchanged with ``accepted=False``."""
    theta = flatten_params(params).detach()
    loss, kl = math.nan, math.nan
    for n in range(max_backtracks):
        fraction = backtrack_ratio**n
        candidate = unflatten_params(theta - fraction * full_step, params)
        with torch.no_grad():
            loss_t, kl_t = loss_kl_fn(candidate)
        loss, kl = float(loss_t), float(kl_t)
        if math.isfinite(loss) and math.isfinite(kl) and loss < loss_before and kl <= max_kl:
            return LineSearchResult(candidate, True, n, fraction, loss, kl)
    return LineSearchResult(params, False, max_backtracks, 0.0, loss, kl)


def trpo_step(
    params: Params,
    loss_fn: ScalarFn,
    kl_fn: ScalarFn,
    config: TRPOConfig | None = None,
    *,
    loss_kl_fn: LossKLFn | None = None,
    derivatives: Derivatives | None = None,
    curvature_kl_fn: ScalarFn | None = None,
) -> tuple[Params, TRPOStats]:
    """One TRPO update of ``params`` minimising ``loss_fn`` subject to ``kl_fn <= max_kl``,
    with the settings of ``config`` (:class:`metarl.config.TRPOConfig`, defaults when None;
    ``hvp_subsample`` and ``accelerator`` are its callers' business).

    ``kl_fn(theta)`` must be ``KL(pi_old || pi_theta)`` with ``pi_old`` fixed at ``params``.
    ``loss_kl_fn``, if given, returns ``(loss, kl)`` together (sharing work) for the line
    search; by default it calls ``loss_fn`` and ``kl_fn``. ``derivatives`` replace autograd
    where given (see :class:`Derivatives`). ``curvature_kl_fn``: the KL whose Hessian the
    products use (default ``kl_fn``; e.g. the KL of a subsample of the data, rllab's
    ``subsample_factor``); the line search always checks ``kl_fn``. With it, the direction
    comes from the subsample's curvature but the step length from ``kl_fn``: one evaluation at
    the full step measures its KL ``k``, the step is scaled by ``sqrt(max_kl / k)``, and the
    backtracking line search starts from there (a subsample's curvature is biased: on MAML
    tasks it made the full step's KL 2.5-4x too small or, from a share of the tasks, far too
    large). Returns new weights
    (detached, or the old dict itself if the step was rejected) and :class:`TRPOStats`.
    """
    c = config or TRPOConfig()
    _check_trpo_args(c)
    d = derivatives or Derivatives()
    loss, g = d.loss_grad(params) if d.loss_grad is not None else flat_grad(loss_fn, params)
    pre = _Direction(float(loss.detach()), float(g.norm()), 0.0, 0.0, math.nan, 0)
    if not (math.isfinite(pre.loss_before) and math.isfinite(pre.grad_norm)) or pre.grad_norm == 0:
        return params, _stats(pre, None)
    hvp_fn = make_hvp(
        curvature_kl_fn or kl_fn, params, method=c.hvp, base_eps=c.fd_base_eps,
        damping=c.damping, derivatives=d,
    )  # fmt: skip
    x, r, products = _cg(hvp_fn, g.detach(), c.cg_iters, 1e-10)
    quad = float(x @ (g - r))  # x^T H x, with H x = g - r tracked by CG
    beta = math.sqrt(2.0 * c.max_kl / (quad + 1e-8)) if math.isfinite(quad) and quad > 0 else 0.0
    found = _Direction(
        pre.loss_before, pre.grad_norm, beta, float(x.norm()), float(r.norm()), products
    )
    if beta == 0.0:
        return params, _stats(found, None)
    both = loss_kl_fn or (lambda p: (loss_fn(p), kl_fn(p)))
    if curvature_kl_fn is not None:  # step length from the full KL along the direction
        rescale = _kl_rescale(params, beta * x, both, c.max_kl)
        beta *= rescale
        found = replace(found, beta=beta, rescale=rescale)
    ls = backtracking_line_search(
        params, beta * x, both, loss_before=pre.loss_before, max_kl=c.max_kl,
        backtrack_ratio=c.backtrack_ratio, max_backtracks=c.max_backtracks,
    )  # fmt: skip
    if not ls.accepted:
        return params, _stats(found, ls)
    return {k: v.detach() for k, v in ls.params.items()}, _stats(found, ls)


@dataclass(frozen=True)
class _Direction:
    """What :func:`trpo_step` knows before the line search."""

    loss_before: float
    grad_norm: float
    beta: float
    x_norm: float
    cg_residual: float
    cg_products: int
    rescale: float = 1.0


def _kl_rescale(params: Params, step: Tensor, loss_kl_fn: LossKLFn, max_kl: float) -> float:
    """``sqrt(max_kl / KL(theta - step))``: the factor that brings the step's KL, measured on
    all the data, to ``max_kl`` under the quadratic model along the step (1.0 if that KL is
    not positive and finite)."""
    theta = flatten_params(params).detach()
    with torch.no_grad():
        kl = float(loss_kl_fn(unflatten_params(theta - step, params))[1])
    return math.sqrt(max_kl / kl) if math.isfinite(kl) and kl > 0.0 else 1.0


def _stats(d: _Direction, ls: LineSearchResult | None) -> TRPOStats:
    """:class:`TRPOStats` from the search direction and the line search (None: not run)."""
    accepted = ls is not None and ls.accepted
    return TRPOStats(
        loss_before=d.loss_before,
        loss_after=ls.loss if ls is not None and accepted else d.loss_before,
        kl_after=ls.kl if ls is not None and accepted else 0.0,
        step_accepted=accepted,
        backtracks=ls.backtracks if ls is not None else 0,
        step_fraction=ls.fraction if ls is not None else 0.0,
        grad_norm=d.grad_norm,
        step_norm=ls.fraction * d.beta * d.x_norm if ls is not None else 0.0,
        initial_step_size=d.beta,
        cg_residual=d.cg_residual,
        cg_products=d.cg_products,
        step_rescale=d.rescale,
        tried_loss=ls.loss if ls is not None else d.loss_before,
        tried_kl=ls.kl if ls is not None else 0.0,
    )


def _check_trpo_args(c: TRPOConfig) -> None:
    """Clear errors for out-of-range TRPO settings (a config built in Python skips the
    checks of loading)."""
    if not c.max_kl > 0.0:
        raise ValueError(f"trpo: max_kl must be > 0, got {c.max_kl}")
    if c.damping < 0.0:
        raise ValueError(f"trpo: damping must be >= 0, got {c.damping}")
    if c.cg_iters < 1:
        raise ValueError(f"trpo: cg_iters must be >= 1, got {c.cg_iters}")
    if not 0.0 < c.backtrack_ratio < 1.0:
        raise ValueError(f"trpo: backtrack_ratio must lie in (0, 1), got {c.backtrack_ratio}")
    if c.max_backtracks < 1:
        raise ValueError(f"trpo: max_backtracks must be >= 1, got {c.max_backtracks}")
