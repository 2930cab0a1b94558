"""Gaussian and categorical MLP policies, used functionally on ``dict[str, Tensor]`` weights.

The modules only hold the architecture and a set of initial weights; every method takes the
weights explicitly (``params``), so the same policy acts with meta-parameters ``theta`` or with
adapted ``theta_i``, and everything composes with ``torch.func.grad`` / ``torch.func.vmap``
(``sample`` excepted: it draws from a ``torch.Generator`` and is meant for the sampler, outside
any transform). Distributions are written in closed form (no ``torch.distributions``).

A distribution is summarised by its *statistics* (``DistStats``, a dict of tensors with the
batch shape in front): ``{"mean", "log_std"}`` for the Gaussian, ``{"log_probs"}`` (normalised
logits) for the categorical. Detached statistics of an old policy give ``KL(old || new)``.
Statistics are the *head* applied to the body output: ``dist_stats(params, obs) =
head(params, body(params, obs))``.

For second-order MAML at speed, :class:`MLPPolicy` also exposes the body's calculus on
*task-batched* weights (every weight with a leading task axis ``K``, inputs ``[K, R, ...]``):
:meth:`~MLPPolicy.body_trace` (forward pass), :meth:`~MLPPolicy.body_vjp` (backward pass),
:meth:`~MLPPolicy.body_jvp` (forward-mode tangent) and :meth:`~MLPPolicy.body_vjp_tangent`
(the tangent of the backward pass, i.e. Pearlmutter's R-operator), written as batched matrix
products with no autograd graph. Together they give Hessian-vector products of any loss of the
outputs without ``vmap`` or double backprop.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
DistStats = dict[str, Tensor]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}
_LOG_2PI = math.log(2.0 * math.pi)


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
    """A task-batched backward pass (:meth:`MLPPolicy.body_vjp`).

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
    """A task-batched forward-mode pass (:meth:`MLPPolicy.body_jvp`): the tangent of each
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


@dataclass(frozen=True)
class PolicySpec:
    """A policy class and its constructor arguments: small, picklable, rebuilt by :meth:`build`."""

    cls: type[MLPPolicy]
    kwargs: dict[str, object]

    def build(self) -> MLPPolicy:
        return self.cls(**self.kwargs)  # type: ignore[arg-type]


class MLPPolicy(nn.Module):
    """Shared MLP body: ``obs -> hidden layers (activation) -> linear head of size out_dim``.

    Weight names follow ``nn.Sequential``: ``mlp.0.weight``, ``mlp.0.bias``, ``mlp.2.weight``,
    ... (activations sit at the odd indices). Initial weights: Glorot-uniform matrices, zero
    biases (as rllab / the MAML code), drawn from ``torch.Generator().manual_seed(seed)``.
    """

    def __init__(
        self,
        *,
        obs_dim: int,
        out_dim: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"policy activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        sizes = (obs_dim, *hidden_sizes, out_dim)
        if any(s < 1 for s in sizes):
            raise ValueError(f"policy layer sizes must be >= 1, got {sizes}")
        self.obs_dim = obs_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            if i > 0:
                layers.append(nn.ReLU() if activation == "relu" else nn.Tanh())
            layers.append(nn.Linear(n_in, n_out, device="meta"))
        self.mlp = nn.Sequential(*layers)
        self._linear_names = [f"mlp.{2 * i}" for i in range(len(sizes) - 1)]
        self._sizes = sizes

    def _load_initial(self, seed: int) -> None:
        """Fill the module's weights from ``init_params`` with a generator seeded ``seed``."""
        self.load_state_dict(self.init_params(torch.Generator().manual_seed(seed)), assign=True)

    def init_params(
        self, generator: torch.Generator, *, dtype: torch.dtype = torch.float32
    ) -> Params:
        """Fresh initial weights, a deterministic function of the generator's state."""
        params: Params = {}
        for name, n_in, n_out in zip(
            self._linear_names, self._sizes[:-1], self._sizes[1:], strict=True
        ):
            bound = math.sqrt(6.0 / (n_in + n_out))
            w = torch.rand(n_out, n_in, generator=generator) * (2.0 * bound) - bound
            params[f"{name}.weight"] = w.to(dtype)
            params[f"{name}.bias"] = torch.zeros(n_out, dtype=dtype)
        params.update(self._extra_init(dtype))
        return params

    def _extra_init(self, dtype: torch.dtype) -> Params:
        """Weights beyond the MLP (e.g. the Gaussian log-std)."""
        return {}

    def params(self) -> Params:
        """A detached copy of the module's weights (the initial ``theta``)."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def body(self, params: Params, obs: Tensor) -> Tensor:
        """The MLP output ``[..., out_dim]`` for ``obs [..., obs_dim]`` with weights ``params``."""
        x = obs
        last = len(self._linear_names) - 1
        for i, name in enumerate(self._linear_names):
            x = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
            if i < last:
                x = self._act(x)
        return x

    def body_params(self, params: Params) -> Params:
        """The weights of the MLP body (the rest, e.g. ``log_std``, only enter the head)."""
        return {k: v for k, v in params.items() if k.startswith("mlp.")}

    def head_params(self, params: Params) -> Params:
        """The weights that enter the head only (``params`` minus :meth:`body_params`)."""
        return {k: v for k, v in params.items() if not k.startswith("mlp.")}

    # Task-batched calculus of the body (weights [K, ...], inputs [K, R, ...], no autograd).

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

    # Distribution interface (closed forms, implemented by the subclasses).

    def head(self, params: Params, out: Tensor) -> DistStats:
        """Distribution statistics from the body output ``out`` (and head-only weights)."""
        raise NotImplementedError

    def dist_stats(self, params: Params, obs: Tensor) -> DistStats:
        """Statistics of the action distribution at each observation."""
        return self.head(params, self.body(params, obs))

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log pi(a | s)`` of ``actions`` under the distribution ``stats``, shape ``[...]``."""
        raise NotImplementedError

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """Closed-form ``KL(old || new)`` per observation, shape ``[...]``."""
        raise NotImplementedError

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """Closed-form entropy per observation, shape ``[...]``."""
        raise NotImplementedError

    def spec(self) -> PolicySpec:
        """What rebuilds this architecture elsewhere (e.g. in a sampler worker): weights travel
        separately, as ``params``."""
        raise NotImplementedError

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """The randomness of ``batch_shape`` action draws, for :meth:`act_from_stats`: drawn
        apart from the policy's outputs, so a sampler can draw a whole rollout's noise at once
        and any split of the sub-envs over workers acts identically."""
        raise NotImplementedError

    def act_from_stats(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Actions (and their log-probabilities) from ``stats`` and :meth:`draw_noise`'s noise."""
        raise NotImplementedError

    def sample_from_stats(
        self, stats: DistStats, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw actions from ``stats``; returns ``(actions, log_probs)``."""
        batch_shape = next(iter(stats.values())).shape[:-1]
        return self.act_from_stats(stats, self.draw_noise(tuple(batch_shape), generator))

    # Functional API on weights.

    def forward(self, obs: Tensor) -> DistStats:
        """Distribution statistics with the module's own (initial) weights."""
        return self.dist_stats(dict(self.named_parameters()), obs)

    def log_prob(self, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
        """``log pi_params(a | s)`` for each step, shape ``obs.shape[:-1]``."""
        return self.log_prob_from_stats(self.dist_stats(params, obs), actions)

    def kl(self, old_stats: DistStats, params: Params, obs: Tensor) -> Tensor:
        """``KL(old || pi_params(.|s))`` per observation; ``old_stats`` from :meth:`dist_stats`."""
        return self.kl_from_stats(old_stats, self.dist_stats(params, obs))

    def entropy(self, params: Params, obs: Tensor) -> Tensor:
        """Entropy of ``pi_params(. | s)`` per observation."""
        return self.entropy_from_stats(self.dist_stats(params, obs))

    def detached_stats(self, params: Params, obs: Tensor) -> DistStats:
        """:meth:`dist_stats` cut from the graph (the 'old' policy of a KL)."""
        return {k: v.detach() for k, v in self.dist_stats(params, obs).items()}

    def sample(
        self, params: Params, obs: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Sample actions (no gradient); returns ``(actions, log_probs)``, batch shape ``[...]``."""
        with torch.no_grad():
            return self.sample_from_stats(self.dist_stats(params, obs), generator)

    def sample_per_task(
        self, task_params: Params, obs: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Sample with one weight set per task: ``task_params`` have a leading task axis ``K``
        (as returned by :func:`metarl.maml_rl.adapt_tasks`) and ``obs`` is ``[K, E, obs_dim]``."""
        with torch.no_grad():
            stats = torch.func.vmap(self.dist_stats)(task_params, obs)
            return self.sample_from_stats(stats, generator)

    def act(self, params: Params, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`sample` with given noise (from :meth:`draw_noise`, batch shape of ``obs``)."""
        with torch.no_grad():
            return self.act_from_stats(self.dist_stats(params, obs), noise)

    def act_per_task(
        self, task_params: Params, obs: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`sample_per_task` with given noise (batch shape ``[K, E]``)."""
        with torch.no_grad():
            stats = torch.func.vmap(self.dist_stats)(task_params, obs)
            return self.act_from_stats(stats, noise)


class GaussianMLPPolicy(MLPPolicy):
    """Diagonal Gaussian ``N(mu_theta(s), diag(exp(log_std))**2)`` with a learned,
    state-independent ``log_std`` (weight name ``log_std``, initialised to ``init_log_std``)."""

    def __init__(
        self,
        *,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
        init_log_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            obs_dim=obs_dim, out_dim=act_dim, hidden_sizes=hidden_sizes, activation=activation
        )
        self.act_dim = act_dim
        self.init_log_std = float(init_log_std)
        self.log_std = nn.Parameter(torch.empty(act_dim, device="meta"))
        self._load_initial(seed)

    def _extra_init(self, dtype: torch.dtype) -> Params:
        return {"log_std": torch.full((self.act_dim,), self.init_log_std, dtype=dtype)}

    def head(self, params: Params, out: Tensor) -> DistStats:
        """``{"mean": out, "log_std": [..., A]}`` (log_std broadcast over the batch)."""
        return {"mean": out, "log_std": params["log_std"].expand_as(out)}

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``-1/2 sum_j [((a_j - mu_j) / sigma_j)**2 + 2 log sigma_j + log 2 pi]``."""
        log_std = stats["log_std"]
        z = (actions - stats["mean"]) * torch.exp(-log_std)
        return -0.5 * (z * z).sum(-1) - log_std.sum(-1) - 0.5 * actions.shape[-1] * _LOG_2PI

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_j [log(s1_j / s0_j) + (s0_j**2 + (m0_j - m1_j)**2) / (2 s1_j**2) - 1/2]``."""
        ls0, ls1 = old["log_std"], new["log_std"]
        diff = old["mean"] - new["mean"]
        ratio = (torch.exp(2.0 * ls0) + diff * diff) * torch.exp(-2.0 * ls1)
        return (ls1 - ls0 + 0.5 * ratio - 0.5).sum(-1)

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """``sum_j [log sigma_j + (1 + log 2 pi) / 2]``."""
        log_std = stats["log_std"]
        return (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)

    def spec(self) -> PolicySpec:
        return PolicySpec(
            GaussianMLPPolicy,
            {
                "obs_dim": self.obs_dim,
                "act_dim": self.act_dim,
                "hidden_sizes": self.hidden_sizes,
                "activation": self.activation,
                "init_log_std": self.init_log_std,
            },
        )

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """``eps ~ N(0, I)``, ``[*batch_shape, act_dim]``."""
        return torch.randn((*batch_shape, self.act_dim), generator=generator)

    def act_from_stats(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """``a = mu + sigma * eps``; log-prob from ``eps`` directly."""
        mean, log_std = stats["mean"], stats["log_std"]
        eps = noise.to(mean.dtype)
        actions = mean + torch.exp(log_std) * eps
        log_probs = -0.5 * (eps * eps).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * _LOG_2PI
        return actions, log_probs


class CategoricalMLPPolicy(MLPPolicy):
    """Categorical over ``num_actions`` actions with logits from the MLP; actions are long."""

    def __init__(
        self,
        *,
        obs_dim: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        if num_actions < 2:
            raise ValueError(f"CategoricalMLPPolicy: num_actions must be >= 2, got {num_actions}")
        super().__init__(
            obs_dim=obs_dim, out_dim=num_actions, hidden_sizes=hidden_sizes, activation=activation
        )
        self.num_actions = num_actions
        self._load_initial(seed)

    def head(self, params: Params, out: Tensor) -> DistStats:
        """``{"log_probs": [..., num_actions]}``, the log-softmax of the logits ``out``."""
        return {"log_probs": torch.log_softmax(out, dim=-1)}

    def log_prob_from_stats(self, stats: DistStats, actions: Tensor) -> Tensor:
        """``log p_a``, picked out of the normalised logits."""
        return stats["log_probs"].gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl_from_stats(self, old: DistStats, new: DistStats) -> Tensor:
        """``sum_a p0_a (log p0_a - log p1_a)``."""
        lp0 = old["log_probs"]
        return (torch.exp(lp0) * (lp0 - new["log_probs"])).sum(-1)

    def entropy_from_stats(self, stats: DistStats) -> Tensor:
        """``-sum_a p_a log p_a``."""
        lp = stats["log_probs"]
        return -(torch.exp(lp) * lp).sum(-1)

    def spec(self) -> PolicySpec:
        return PolicySpec(
            CategoricalMLPPolicy,
            {
                "obs_dim": self.obs_dim,
                "num_actions": self.num_actions,
                "hidden_sizes": self.hidden_sizes,
                "activation": self.activation,
            },
        )

    def draw_noise(self, batch_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """``u ~ U[0, 1)``, ``[*batch_shape]``."""
        return torch.rand(batch_shape, generator=generator)

    def act_from_stats(self, stats: DistStats, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse-CDF draw: the first action whose cumulative probability exceeds ``u``."""
        lp = stats["log_probs"]
        cdf = torch.cumsum(torch.exp(lp), dim=-1)
        u = noise.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]  # cdf[-1] is 1 up to rounding
        actions = (cdf <= u).sum(-1).clamp(max=self.num_actions - 1)
        return actions, self.log_prob_from_stats(stats, actions)
