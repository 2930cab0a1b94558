"""Hand-derived meta-KL derivatives for the default MLP policy: an accelerator behind
:class:`metarl.rl.maml_trpo.MetaObjective`'s ``kl_grad`` (what finite-difference products
difference) and ``gauss_newton_hvp``, and, with Gauss-Newton products on all valid episodes,
its ``loss_and_grad`` at ``theta_old`` (from the passes the products keep there: 0.07 s
against 0.21 s generic at the paper's size, 8% of a meta-iteration). ``trpo.accelerator:
true`` (the default) picks it for :class:`~metarl.rl.policies.MLPNetwork` policies with
``trpo.hvp`` ``finite_difference`` or ``gauss_newton``; ``false`` keeps the generic
``torch.func`` path, which every other network uses. The tests check it equal to that path in
float64.

Why it stays (benchmarks/maml_trpo_speed.py --paths accelerated generic: both paths' learners
in one process, iterations interleaved, medians of 5 after a warm-up; one torch thread on a
2-core machine that other jobs shared): a Navigation2D meta-iteration at the paper's size
(20 tasks x 20 episodes x H100, 2-100-100-2 ReLU, one second-order inner step) takes 1.87 s
against 4.28 s generic with Gauss-Newton products (2.3x; 1.76 against 3.60 s with
``hvp_subsample`` 0.1) and 5.49 against 6.98 s with finite differences (1.27x; 3.84 against
5.50 s with 0.1; the code before this accelerator was generic: 4.93 against 6.80 s, 1.38x).
At HalfCheetah's policy shape (obs 20, act 6, the general R-operator below) a TRPO step on
40,000 rows took 3.43 against 6.05 s (Gauss-Newton) and 5.57 against 7.57 s (finite
differences). Exact products gain nothing from it (double backprop either way).

The calculus works on *task-batched* weights (every weight with a leading task axis ``K``,
inputs ``[K, R, ...]``): forward pass (:meth:`MLPCalculus.body_trace`), backward pass
(:meth:`~MLPCalculus.body_vjp`), forward-mode tangent (:meth:`~MLPCalculus.body_jvp`) and the
tangent of the backward pass, Pearlmutter's R-operator (:meth:`~MLPCalculus.body_vjp_tangent`),
written as batched matrix products with no autograd graph. For a two-hidden-layer ReLU body with
low-dimensional observations and actions (2-D navigation) row sums (:class:`ReluMoments`) make
every product cheaper still. Output-space Hessians of the losses (a few outputs per row) are
built once with ``torch.func`` and applied as explicit blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metarl.rl.losses import TaskRows, masked_mean, surrogate_from_stats
from metarl.rl.policies import DistStats, MLPNetwork, Params, Policy
from metarl.rl.trpo import flatten_params, unflatten_params

if TYPE_CHECKING:  # metarl.rl.maml_trpo imports this module
    from metarl.rl.maml_trpo import MetaObjective


def accelerate(policy: Policy, objective: MetaObjective) -> MLPAccelerator | None:
    """The hand calculus's derivatives of ``objective``'s meta-KL (:class:`MLPAccelerator`)
    when the policy's network is the default MLP; else None."""
    if not isinstance(policy.network, MLPNetwork):
        return None
    return MLPAccelerator(policy, objective)


@dataclass(frozen=True)
class MLPTrace:
    """A task-batched forward pass of an MLP body, kept for its derivatives.

    ``inputs[l]`` is the input of linear layer ``l`` (``[K, R, n_in]``); ``slopes[l]`` and
    ``curvatures[l]`` the first and second derivative of the activation at hidden layer ``l``'s
    pre-activation (``curvatures`` is empty for ReLU, whose second derivative is 0 almost
    everywhere); ``output`` the body output ``[K, R, out_dim]``.
    """

    inputs: tuple[Tensor, ...]
    slopes: tuple[Tensor, ...]
    curvatures: tuple[Tensor, ...]
    output: Tensor


@dataclass(frozen=True)
class MLPCotangents:
    """A task-batched backward pass (:meth:`MLPCalculus.body_vjp`).

    ``grads`` holds the body weights' cotangents (``[K, ...]``, summed over rows);
    ``signals[l]`` the cotangent of linear layer ``l``'s output (``[K, R, n_out]``) and
    ``back[l]`` that of its input, before the previous activation's slope (``l >= 1``).
    """

    grads: Params
    signals: tuple[Tensor, ...]
    back: tuple[Tensor, ...]
    """Empty when the activation has no curvature (ReLU), where nothing needs it."""


@dataclass(frozen=True)
class MLPTangents:
    """A task-batched forward-mode pass (:meth:`MLPCalculus.body_jvp`): the tangent of each
    linear layer's input (``None`` for the observations, which have none), of each hidden
    pre-activation (only kept for an activation with curvature: tanh), and of the body
    output."""

    inputs: tuple[Tensor | None, ...]
    pre: tuple[Tensor, ...]
    output: Tensor


@dataclass(frozen=True)
class OutputJacobian:
    """Per-row gradients of a two-hidden-layer ReLU body's outputs with respect to its first
    hidden layer's pre-activations: column ``o * R + r`` of ``qt`` (``[K, H0, out_dim * R]``,
    rows last: MKL multiplies it fastest) is ``m0_r * W1^T (m1_r * W2[o])`` (``m0``, ``m1`` the
    ReLU slopes); ``inputs1`` (``[K, obs_dim + 1, R]``) holds the observations and a row of
    ones. With them a forward-mode or backward pass needs one large matrix product (the
    hidden-to-hidden layer's) instead of two."""

    inputs1: Tensor
    qt: Tensor


@dataclass(frozen=True)
class ReluMoments:
    """Row sums that make the R-operator of a loss's backward pass through a two-hidden-layer
    ReLU body cost two large matrix products instead of six, when the observations and outputs
    are low-dimensional (the paper's 2-D navigation). With ``s = [obs, 1]``, ``e`` the loss's
    output cotangent and ``d1`` the cotangent of the second hidden pre-activation, per task:
    ``b[:, m, k, j] = sum_r d1[r, k] s[r, m] m0[r, j]`` and
    ``d[:, o, m, k, j] = sum_r e[r, o] s[r, m] m1[r, k] m0[r, j]``.

    Why they suffice: a tangent ``V`` moves the first hidden layer by ``x1' = m0 * (V0 s)``
    (``V0`` with its bias as a last column), which is linear in the obs_dim + 1 numbers of
    ``s``. So every term of the R-operator that pairs ``x1'`` or ``V1^T d1`` with a fixed row
    quantity (``d1``, ``s``, or ``e`` through ``m1`` and ``W1``) is a contraction of ``b`` or
    ``d`` with ``V0``, ``V1``, ``V2``: no row-by-row product with a hidden-size matrix is left but
    ``x1 V1^T`` and the second layer's weight cotangent."""

    jac: OutputJacobian
    b: Tensor
    d: Tensor


def _weight_t(weight: Tensor) -> Tensor:
    """``weight^T`` per task, laid out the way MKL multiplies fastest (contiguous when the
    layer has few inputs, a transposed view otherwise)."""
    wt = weight.transpose(1, 2)
    return wt.contiguous() if weight.shape[-1] <= 4 else wt


def _times_weight_t(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight^T`` per task: ``[K, R, n_in] x [K, n_out, n_in] -> [K, R, n_out]``
    (a fresh tensor; bias and sums are added in place afterwards, which is faster than
    MKL's accumulating ``baddbmm`` here)."""
    return torch.bmm(x, _weight_t(weight))


def _affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight^T + bias`` per task (``bias`` is ``[K, n_out]``)."""
    return _times_weight_t(x, weight).add_(bias.unsqueeze(1))


def _row_products(left: Tensor, right: Tensor) -> Tensor:
    """``sum_r left[:, r, :, None] * right[:, r, None, :]`` per task: ``[K, n_out, n_in]``."""
    if left.shape[-1] > right.shape[-1]:  # MKL prefers the skinny factor on the left
        return torch.bmm(right.transpose(1, 2), left).transpose(1, 2)
    return torch.bmm(left.transpose(1, 2), right)


def _with_bias_column(params: Params, name: str) -> Tensor:
    """``[W, b]`` of linear layer ``name``: ``[K, n_out, n_in + 1]``."""
    return torch.cat([params[f"{name}.weight"], params[f"{name}.bias"].unsqueeze(-1)], -1)


def _first_layer_sums(jac: OutputJacobian, out_cot: Tensor) -> Tensor:
    """``sum_(o, r) out_cot[r, o] qt[:, o * R + r] inputs1[:, r]^T``: the first layer's weight
    and bias cotangents ``[K, H0, obs_dim + 1]`` for the output cotangent ``out_cot [K, R, O]``."""
    k, c, _ = jac.inputs1.shape
    left = jac.inputs1.unsqueeze(2) * out_cot.transpose(1, 2).unsqueeze(1)  # [K, c, O, R]
    return torch.bmm(left.reshape(k, c, -1), jac.qt.transpose(1, 2)).transpose(1, 2)


class MLPCalculus:
    """The task-batched calculus of a policy's :class:`~metarl.rl.policies.MLPNetwork` body
    (weights named ``{prefix}{2 l}.weight`` / ``.bias``); the policy's other weights enter
    its head only."""

    def __init__(self, network: MLPNetwork, prefix: str) -> None:
        self.activation = network.activation
        self._sizes = network.sizes
        self._prefix = prefix
        self._linear_names = [f"{prefix}{2 * i}" for i in range(len(network.sizes) - 1)]

    def head_params(self, params: Params) -> Params:
        """The weights that enter the head only (not the body's)."""
        return {k: v for k, v in params.items() if not k.startswith(self._prefix)}

    def _activate(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(activation, slope, curvature)`` at ``pre`` (curvature None for ReLU, whose
        activation overwrites ``pre``: a fresh tensor nobody else holds)."""
        if self.activation == "relu":
            out = pre.relu_()
            return out, torch.sign(out), None
        out = torch.tanh(pre)
        slope = 1.0 - out * out
        return out, slope, -2.0 * out * slope

    def body_trace(self, params: Params, obs: Tensor) -> MLPTrace:
        """The body output for task-batched ``params`` and ``obs [K, R, obs_dim]``, with what
        :meth:`body_vjp`, :meth:`body_jvp` and :meth:`body_vjp_tangent` need."""
        x, inputs = obs, [obs]
        slopes: list[Tensor] = []
        curvatures: list[Tensor] = []
        last = len(self._linear_names) - 1
        for i, name in enumerate(self._linear_names):
            pre = _affine(x, params[f"{name}.weight"], params[f"{name}.bias"])
            if i == last:
                return MLPTrace(tuple(inputs), tuple(slopes), tuple(curvatures), pre)
            x, slope, curvature = self._activate(pre)
            inputs.append(x)
            slopes.append(slope)
            if curvature is not None:
                curvatures.append(curvature)
        raise AssertionError("unreachable: an MLP has at least one linear layer")

    def body_vjp(self, params: Params, trace: MLPTrace, out_cot: Tensor) -> MLPCotangents:
        """Backward pass: the body weights' cotangents for the output cotangent ``out_cot``."""
        n = len(self._linear_names)
        grads: Params = {}
        signals: list[Tensor] = [out_cot] * n
        back: list[Tensor] = [out_cot] * n
        delta = out_cot
        for i in reversed(range(n)):
            name = self._linear_names[i]
            signals[i] = delta
            grads[f"{name}.weight"] = _row_products(delta, trace.inputs[i])
            grads[f"{name}.bias"] = delta.sum(1)
            if i > 0:
                b = torch.bmm(delta, params[f"{name}.weight"])
                if trace.curvatures:  # tanh: the R-operator needs b itself
                    back[i], delta = b, b * trace.slopes[i - 1]
                else:
                    delta = b.mul_(trace.slopes[i - 1])
        ordered = {k: grads[k] for k in self._weight_names()}
        return MLPCotangents(ordered, tuple(signals), tuple(back) if trace.curvatures else ())

    def body_jvp(self, params: Params, trace: MLPTrace, tangent: Params) -> MLPTangents:
        """Forward-mode pass: the tangent of the body output when the (task-batched) weights
        move along ``tangent`` (the observations are fixed)."""
        x_t: Tensor | None = None
        inputs: list[Tensor | None] = []
        pre: list[Tensor] = []
        last = len(self._linear_names) - 1
        for i, name in enumerate(self._linear_names):
            inputs.append(x_t)
            a_t = _affine(trace.inputs[i], tangent[f"{name}.weight"], tangent[f"{name}.bias"])
            if x_t is not None:
                a_t = a_t.add_(_times_weight_t(x_t, params[f"{name}.weight"]))
            if i == last:
                return MLPTangents(tuple(inputs), tuple(pre), a_t)
            if trace.curvatures:  # tanh: the R-operator needs the pre-activation tangent
                pre.append(a_t)
                x_t = trace.slopes[i] * a_t
            else:
                x_t = a_t.mul_(trace.slopes[i])
        raise AssertionError("unreachable: an MLP has at least one linear layer")

    def body_vjp_tangent(
        self,
        params: Params,
        trace: MLPTrace,
        cot: MLPCotangents,
        tangent: Params,
        tan: MLPTangents,
        out_cot_tangent: Tensor,
    ) -> Params:
        """Tangent of :meth:`body_vjp`'s weight cotangents when the weights move along
        ``tangent`` (forward pass ``tan``) and the output cotangent along ``out_cot_tangent``
        (Pearlmutter's R-operator of backprop; with a loss's own cotangents this is the
        loss's Hessian-vector product)."""
        grads: Params = {}
        delta_t = out_cot_tangent
        for i in reversed(range(len(self._linear_names))):
            name = self._linear_names[i]
            g_w = _row_products(delta_t, trace.inputs[i])
            x_t = tan.inputs[i]
            if x_t is not None:
                g_w = g_w.add_(_row_products(cot.signals[i], x_t))
            grads[f"{name}.weight"] = g_w
            grads[f"{name}.bias"] = delta_t.sum(1)
            if i > 0:
                delta_t = self._back_tangent(params, tangent, trace, cot, tan, i, delta_t)
        return {k: grads[k] for k in self._weight_names()}

    def _back_tangent(
        self,
        params: Params,
        tangent: Params,
        trace: MLPTrace,
        cot: MLPCotangents,
        tan: MLPTangents,
        i: int,
        delta_t: Tensor,
    ) -> Tensor:
        """Tangent of the signal below linear layer ``i`` (``i >= 1``)."""
        name = f"{self._linear_names[i]}.weight"
        back_t = torch.bmm(delta_t, params[name]).add_(torch.bmm(cot.signals[i], tangent[name]))
        out = back_t.mul_(trace.slopes[i - 1])
        if trace.curvatures:
            out = out.add_(trace.curvatures[i - 1] * tan.pre[i - 1] * cot.back[i])
        return out

    # Low-rank calculus of a two-hidden-layer ReLU body (see OutputJacobian, ReluMoments).

    def supports_low_rank(self, *, max_rank: int = 16) -> bool:
        """Whether :meth:`relu_moments` applies and pays: two hidden ReLU layers and
        ``out_dim * (obs_dim + 1) <= max_rank`` (its row sums, and their cost, grow with it)."""
        sizes = self._sizes
        rank = sizes[-1] * (sizes[0] + 1)
        return self.activation == "relu" and len(sizes) == 4 and rank <= max_rank

    def output_jacobian(self, params: Params, trace: MLPTrace) -> OutputJacobian:
        """The :class:`OutputJacobian` at task-batched ``params`` (``out_dim`` large products)."""
        m0, m1 = trace.slopes
        w1, w2 = (
            params[f"{self._linear_names[1]}.weight"],
            params[f"{self._linear_names[2]}.weight"],
        )
        k, r, h1 = m1.shape
        scaled = m1.transpose(1, 2).unsqueeze(2) * w2.transpose(1, 2).unsqueeze(-1)  # [K,H1,O,R]
        qt = torch.bmm(w1.transpose(1, 2), scaled.reshape(k, h1, -1))  # [K, H0, O * R]
        qt.view(k, -1, w2.shape[1], r).mul_(m0.transpose(1, 2).unsqueeze(2))
        ones = torch.ones_like(trace.inputs[0][..., :1])
        return OutputJacobian(
            torch.cat([trace.inputs[0], ones], -1).transpose(1, 2).contiguous(), qt
        )

    def relu_moments(self, params: Params, trace: MLPTrace, cot: MLPCotangents) -> ReluMoments:
        """The :class:`ReluMoments` of the loss whose backward pass is ``cot`` (about
        ``(out_dim + 1) * (obs_dim + 1) + out_dim`` large products, once)."""
        jac = self.output_jacobian(params, trace)
        s1, (m0, m1) = jac.inputs1.transpose(1, 2).contiguous(), trace.slopes
        e, d1 = cot.signals[2], cot.signals[1]
        k, r, h1 = m1.shape
        n_out, c, h0 = e.shape[-1], s1.shape[-1], m0.shape[-1]
        left = m1.new_empty(k, r, 1 + n_out, h1)  # [d1, e_o * m1 for each o]
        left[:, :, 0] = d1
        torch.mul(e.unsqueeze(-1), m1.unsqueeze(2), out=left[:, :, 1:])
        right = torch.mul(s1.unsqueeze(-1), m0.unsqueeze(2))  # [K, R, c, H0]
        sums = torch.bmm(left.view(k, r, -1).transpose(1, 2), right.view(k, r, -1))
        sums = sums.view(k, 1 + n_out, h1, c, h0).transpose(2, 3).contiguous()
        return ReluMoments(jac, sums[:, 0], sums[:, 1:])

    def low_rank_jvp(
        self, params: Params, trace: MLPTrace, jac: OutputJacobian, tangent: Params
    ) -> tuple[Tensor, Tensor]:
        """Like :meth:`body_jvp`: ``(output tangent, m1 * (x1 V1^T + vb1))``, the second
        hidden layer's tangent without the first layer's contribution."""
        l0, l1, l2 = self._linear_names
        k, c, r = jac.inputs1.shape
        v0t = _with_bias_column(tangent, l0).transpose(1, 2)  # [K, c, H0]
        via_first = torch.bmm(v0t, jac.qt).view(k, c, -1, r)  # [K, c, O, R]
        out_t = (via_first * jac.inputs1.unsqueeze(2)).sum(1).transpose(1, 2)
        p = _affine(trace.inputs[1], tangent[f"{l1}.weight"], tangent[f"{l1}.bias"])
        p = p.mul_(trace.slopes[1])
        out_t = out_t + _times_weight_t(p, params[f"{l2}.weight"])
        return out_t + _affine(trace.inputs[2], tangent[f"{l2}.weight"], tangent[f"{l2}.bias"]), p

    def low_rank_vjp(
        self, params: Params, trace: MLPTrace, jac: OutputJacobian, out_cot: Tensor
    ) -> Params:
        """Like :meth:`body_vjp`'s weight cotangents, with one large product instead of two."""
        l2 = self._linear_names[2]
        d1 = torch.bmm(out_cot, params[f"{l2}.weight"]).mul_(trace.slopes[1])
        first = _first_layer_sums(jac, out_cot)
        return self._named_grads(
            first, _row_products(d1, trace.inputs[1]), d1.sum(1),
            _row_products(out_cot, trace.inputs[2]), out_cot.sum(1),
        )  # fmt: skip

    def low_rank_vjp_tangent(
        self,
        params: Params,
        trace: MLPTrace,
        cot: MLPCotangents,
        moments: ReluMoments,
        tangent: Params,
        p: Tensor,
        out_cot_tangent: Tensor,
    ) -> Params:
        """Like :meth:`body_vjp_tangent` (``p`` from :meth:`low_rank_jvp`), with two large
        products instead of four and the first layer's terms from ``moments``."""
        l0, l1, l2 = self._linear_names
        e, e_t = cot.signals[2], out_cot_tangent
        w1, w2 = params[f"{l1}.weight"], params[f"{l2}.weight"]
        v1, v2 = tangent[f"{l1}.weight"], tangent[f"{l2}.weight"]
        v0 = _with_bias_column(tangent, l0).transpose(1, 2)[:, :, None]  # [K, c, 1, H0]
        g_w2 = _row_products(e_t, trace.inputs[2]).add_(_row_products(e, p))
        g_w2 = g_w2.add_(((moments.d * v0.unsqueeze(1)).sum(2) * w1.unsqueeze(1)).sum(-1))
        d1_t = torch.bmm(torch.cat([e_t, e], -1), torch.cat([w2, v2], 1)).mul_(trace.slopes[1])
        g_w1 = _row_products(d1_t, trace.inputs[1]).add_((moments.b * v0).sum(1))
        v2_d = (moments.d * v2[:, :, None, :, None]).sum(1)  # [K, c, H1, H0]
        extra = (moments.b * v1.unsqueeze(1) + v2_d * w1.unsqueeze(1)).sum(2)  # [K, c, H0]
        first = _first_layer_sums(moments.jac, e_t) + extra.transpose(1, 2)
        return self._named_grads(first, g_w1, d1_t.sum(1), g_w2, e_t.sum(1))

    def _named_grads(
        self, first: Tensor, g_w1: Tensor, g_b1: Tensor, g_w2: Tensor, g_b2: Tensor
    ) -> Params:
        """Weight cotangents by name; ``first`` is the first layer's ``[K, H0, obs_dim + 1]``
        (weights, then the bias as the last column)."""
        l0, l1, l2 = self._linear_names
        return {
            f"{l0}.weight": first[..., :-1], f"{l0}.bias": first[..., -1],
            f"{l1}.weight": g_w1, f"{l1}.bias": g_b1, f"{l2}.weight": g_w2, f"{l2}.bias": g_b2,
        }  # fmt: skip

    def _weight_names(self) -> list[str]:
        return [f"{name}.{kind}" for name in self._linear_names for kind in ("weight", "bias")]


# ------------------------------------------------------- output-space objectives and Hessians

OutputFn = Callable[[Tensor, Params], Tensor]
"""A scalar function of the task-batched body output ``[K, R, out]`` and head weights."""


def _vpg_rows(policy: Policy, rows: TaskRows, out: Tensor, head: Params) -> Tensor:
    log_probs = policy.log_prob_from_stats(policy.head.stats(head, out), rows.actions)
    return -masked_mean(log_probs * rows.advantages, rows.mask)


def _kl_rows(policy: Policy, rows: TaskRows, old: DistStats, out: Tensor, head: Params) -> Tensor:
    return masked_mean(policy.kl_from_stats(old, policy.head.stats(head, out)), rows.mask)


def _surrogate_rows(policy: Policy, rows: TaskRows, out: Tensor, head: Params) -> Tensor:
    return surrogate_from_stats(policy, policy.head.stats(head, out), rows, rows.advantages)


def _over_tasks(
    per_task: Callable[..., Tensor], data: tuple[object, ...], *, total: bool
) -> OutputFn:
    """``(out, head) -> sum (total) or mean over tasks of per_task(*data_i, out_i, head_i)``."""

    def fn(out: Tensor, head: Params) -> Tensor:
        values: Tensor = torch.func.vmap(per_task)(*data, out, head)
        return values.sum() if total else values.mean()

    return fn


def _output_grad(fn: OutputFn, out: Tensor, head: Params) -> tuple[Tensor, Tensor, Params]:
    """``(fn, d fn / d out, d fn / d head)`` (cheap: elementwise in the outputs)."""
    grads, value = torch.func.grad_and_value(fn, argnums=(0, 1))(out, head)
    return value, grads[0], grads[1]


def _output_hvp(
    fn: OutputFn, point: tuple[Tensor, Params], tangent: tuple[Tensor, Params]
) -> tuple[Tensor, Params]:
    """The Hessian of ``fn`` in output space at ``point`` applied to ``tangent``."""
    tangents = torch.func.jvp(torch.func.grad(fn, argnums=(0, 1)), point, tangent)[1]
    return tangents[0], tangents[1]


def _flat_head(head: Params, k: int, like: Tensor) -> Tensor:
    """Task-batched head weights as ``[K, P]`` (``P = 0`` for a head without weights)."""
    if not head:
        return like.new_zeros(k, 0)
    return torch.cat([v.reshape(k, -1) for v in head.values()], 1)


def _unflat_head(flat: Tensor, like: Params) -> Params:
    """Inverse of :func:`_flat_head`: ``[K, P]`` back to task-batched weights like ``like``."""
    out, offset = {}, 0
    for name, v in like.items():
        n = v[0].numel()
        out[name] = flat[:, offset : offset + n].view_as(v)
        offset += n
    return out


@dataclass(frozen=True)
class _OutputHessian:
    """The Hessian of a row-separable output-space objective (a sum over rows of terms in one
    row's outputs and its task's head weights) at a point, as explicit blocks: ``oo`` ``[K, R,
    O, O]`` (a row's outputs), ``oh`` ``[K, R, O, P]`` (a row's outputs with the task's ``P``
    flattened head weights) and ``hh`` ``[K, P, P]``. Applying it costs a few elementwise
    passes over the outputs instead of a ``torch.func`` transform."""

    oo: Tensor
    oh: Tensor
    hh: Tensor
    head: Params

    def apply(self, out_t: Tensor, head_t: Params) -> tuple[Tensor, Params]:
        """``H (out_t, head_t)``."""
        h = _flat_head(head_t, out_t.shape[0], out_t)
        out_c = (self.oo @ out_t.unsqueeze(-1) + self.oh @ h[:, None, :, None]).squeeze(-1)
        from_out = (out_t.unsqueeze(-2) @ self.oh).sum(1).squeeze(-2)  # [K, P]
        head_c = from_out + (self.hh @ h.unsqueeze(-1)).squeeze(-1)
        return out_c, _unflat_head(head_c, self.head)


def _output_hessian(fn: OutputFn, out: Tensor, head: Params) -> _OutputHessian:
    """The :class:`_OutputHessian` of ``fn`` at ``(out, head)``: its products with the
    ``O + P`` basis tangents (one per output channel, for every row at once, and one per head
    weight), batched with ``vmap``."""
    k, r, n_out = out.shape
    flat = _flat_head(head, k, out)
    eye = torch.eye(n_out + flat.shape[1], dtype=out.dtype, device=out.device)
    basis_out = eye[:, :n_out, None, None].transpose(1, 3).expand(-1, k, r, n_out)
    basis_head = eye[:, None, n_out:].expand(-1, k, -1)

    def column(t_out: Tensor, t_head: Tensor) -> tuple[Tensor, Tensor]:
        out_c, head_c = _output_hvp(fn, (out, head), (t_out, _unflat_head(t_head, head)))
        return out_c, _flat_head(head_c, k, out)

    cols_out, cols_head = torch.func.vmap(column)(basis_out, basis_head)
    return _OutputHessian(
        cols_out[:n_out].permute(1, 2, 3, 0),
        cols_out[n_out:].permute(1, 2, 3, 0),
        cols_head[n_out:].permute(1, 2, 0),
        head,
    )


# ------------------------------------------------------------------ the Gauss-Newton product


@dataclass(frozen=True)
class _Point:
    """Task-batched weights, the forward pass at them, the backward pass of the inner loss and,
    when many products will follow (``prepared``), its output-space Hessian and (where the body
    supports them) its :class:`ReluMoments`."""

    params: Params
    trace: MLPTrace
    cot: MLPCotangents
    hessian: _OutputHessian | None = None
    moments: ReluMoments | None = None


class MLPAccelerator:
    """Derivatives of ``objective``'s meta-KL by :class:`MLPCalculus`, equal to
    :class:`~metarl.rl.maml_trpo.MetaObjective`'s: :meth:`kl_grad` (what finite-difference products
    difference) and :meth:`gauss_newton_hvp` at ``objective.theta_old``. Each pulls a cotangent
    back through the inner steps as ``(I - lr H_k) u`` with ``H_k`` the inner loss's Hessian by
    the R-operator. For the Gauss-Newton products the passes at ``theta_old``, the output-space
    Hessians and the low-rank row sums are computed once, on the first product."""

    def __init__(self, policy: Policy, objective: MetaObjective) -> None:
        assert isinstance(policy.network, MLPNetwork)
        self.policy, self.inner = policy, objective.inner
        self.calc = MLPCalculus(policy.network, policy.prefix)
        self.theta_old = objective.theta_old
        self.low_rank = self.calc.supports_low_rank()
        self.train, self.valid = objective.adaptation.rows, objective.valid
        self.num_tasks = self.train.observations.shape[0]
        self._inner_loss = _over_tasks(partial(_vpg_rows, policy), (self.train,), total=True)
        old = (self.valid, objective.old_stats)
        self._kl = _over_tasks(partial(_kl_rows, policy), old, total=False)
        self._surrogate = _over_tasks(partial(_surrogate_rows, policy), (self.valid,), total=False)
        self._at_old: tuple[tuple[_Point, ...], Params, MLPTrace] | None = None
        self._kl_hessian: _OutputHessian | None = None
        self._jac: OutputJacobian | None = None

    def loss_and_grad(self, theta: Params) -> tuple[Tensor, Tensor]:
        """``(meta-surrogate, its flat gradient)`` at ``theta_old`` (the only point: ``theta``
        must be it), from the passes the Gauss-Newton products keep (computed here when this
        comes first): the valid surrogate's gradient pulled back through the inner steps.
        Used with ``trpo.hvp: gauss_newton`` alone, where those passes are made anyway."""
        if theta is not self.theta_old:
            raise ValueError("MLPAccelerator.loss_and_grad: only at theta_old")
        calc = self.calc
        with torch.no_grad():
            steps, params, trace = self._prepared()
            value, g_out, g_head = _output_grad(
                self._surrogate, trace.output, calc.head_params(params)
            )
            z = {**calc.body_vjp(params, trace, g_out).grads, **g_head}
            return value, self._pull_back(steps, z)

    def kl_grad(self, theta: Params) -> Tensor:
        """Flat gradient of the meta-KL at ``theta``, re-adapting from the same episodes."""
        with torch.no_grad():
            steps, params = self._adapt(theta, prepared=False)
            trace = self.calc.body_trace(params, self.valid.observations)
            _, g_out, g_head = _output_grad(self._kl, trace.output, self.calc.head_params(params))
            z = {**self.calc.body_vjp(params, trace, g_out).grads, **g_head}
            return self._pull_back(steps, z)

    def gauss_newton_hvp(self, v: Tensor) -> Tensor:
        """``J^T F J v`` at ``theta_old``, without damping (see
        :meth:`~metarl.rl.maml_trpo.MetaObjective.gauss_newton_hvp`)."""
        calc = self.calc
        with torch.no_grad():
            steps, params, trace = self._prepared()
            assert self._kl_hessian is not None
            u = self._expand(unflatten_params(v, self.theta_old))
            for point in steps:
                u = self._through_step(point, u)
            if self._jac is None:
                out_t = calc.body_jvp(params, trace, u).output
            else:
                out_t = calc.low_rank_jvp(params, trace, self._jac, u)[0]
            out_c, head_c = self._kl_hessian.apply(out_t, calc.head_params(u))
            if self._jac is None:
                z = calc.body_vjp(params, trace, out_c).grads
            else:
                z = calc.low_rank_vjp(params, trace, self._jac, out_c)
            return self._pull_back(steps, {**z, **head_c})

    def _prepared(self) -> tuple[tuple[_Point, ...], Params, MLPTrace]:
        """The passes at ``theta_old`` with the Hessians and row sums (computed once)."""
        if self._at_old is None:
            steps, params = self._adapt(self.theta_old, prepared=True)
            trace = self.calc.body_trace(params, self.valid.observations)
            head = self.calc.head_params(params)
            self._kl_hessian = _output_hessian(self._kl, trace.output, head)
            self._jac = self.calc.output_jacobian(params, trace) if self.low_rank else None
            self._at_old = (steps, params, trace)
        return self._at_old

    def _expand(self, theta: Params) -> Params:
        k = self.num_tasks
        return {name: v.detach().expand(k, *v.shape).contiguous() for name, v in theta.items()}

    def _adapt(self, theta: Params, *, prepared: bool) -> tuple[tuple[_Point, ...], Params]:
        """The inner steps from ``theta``: their passes (none when first order, whose
        meta-gradient does not pull back through them) and the adapted weights ``[K, ...]``."""
        params, steps = self._expand(theta), []
        for _ in range(self.inner.steps):
            point, grads = self._point(params, prepared)
            steps.append(point)
            params = {k: p - self.inner.lr * grads[k] for k, p in params.items()}
        return (() if self.inner.first_order else tuple(steps)), params

    def _point(self, params: Params, prepared: bool) -> tuple[_Point, Params]:
        """The inner loss's passes at ``params`` (with its Hessian and row sums when
        ``prepared``), and its gradient."""
        calc = self.calc
        trace = calc.body_trace(params, self.train.observations)
        head = calc.head_params(params)
        _, g_out, g_head = _output_grad(self._inner_loss, trace.output, head)
        cot = calc.body_vjp(params, trace, g_out)
        point = _Point(params, trace, cot)
        if prepared:
            moments = calc.relu_moments(params, trace, cot) if self.low_rank else None
            hessian = _output_hessian(self._inner_loss, trace.output, head)
            point = _Point(params, trace, cot, hessian, moments)
        return point, {**cot.grads, **g_head}

    def _inner_hvp(self, point: _Point, u: Params) -> Params:
        """``H u``: the inner loss's Hessian at ``point`` times task-batched ``u``."""
        calc, m = self.calc, point.moments
        tangent = calc.head_params(u)
        at = (point.trace.output, calc.head_params(point.params))
        if m is None:
            tan = calc.body_jvp(point.params, point.trace, u)
            if point.hessian is None:
                out_t, head_t = _output_hvp(self._inner_loss, at, (tan.output, tangent))
            else:
                out_t, head_t = point.hessian.apply(tan.output, tangent)
            body_t = calc.body_vjp_tangent(point.params, point.trace, point.cot, u, tan, out_t)
        else:
            assert point.hessian is not None
            out_t, p = calc.low_rank_jvp(point.params, point.trace, m.jac, u)
            out_t, head_t = point.hessian.apply(out_t, tangent)
            body_t = calc.low_rank_vjp_tangent(point.params, point.trace, point.cot, m, u, p, out_t)
        return {**body_t, **head_t}

    def _through_step(self, point: _Point, u: Params) -> Params:
        """``(I - lr H) u``: the inner step's Jacobian (symmetric) times ``u``."""
        hu = self._inner_hvp(point, u)
        return {k: u[k] - self.inner.lr * hu[k] for k in u}

    def _pull_back(self, steps: tuple[_Point, ...], z: Params) -> Tensor:
        """Flat ``sum_k J_k^T z_k`` from cotangents ``z_k`` of the adapted weights."""
        for point in reversed(steps):
            z = self._through_step(point, z)
        return flatten_params({k: z[k].sum(0) for k in self.theta_old})
