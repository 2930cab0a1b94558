"""Experiment configuration: frozen dataclasses, loaded from YAML with ``key=value`` overrides.

Every field carries a docstring right under it (read back by :func:`field_docs`) and, where a
range matters, bounds in its metadata (:func:`bounded`). Loading checks every key, type and
range at the boundary and raises :class:`ConfigError` naming the key, the value and what is
allowed, so a typo never becomes a traceback from deep inside torch.

A top-level experiment config has a ``kind`` field (``sinusoid``, ``rl``, ...); the YAML file's
``kind`` key picks the class from :data:`CONFIG_KINDS`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import math
import operator
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from metarl.errors import replacing

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key, type or value that is not allowed; the message says what is."""


def bounded(
    default: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field with a default and numeric bounds checked on load."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    if isinstance(default, tuple | list):
        return field(default_factory=lambda: tuple(default), metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


# --------------------------------------------------------------------------- shared sections


@dataclass(frozen=True)
class InnerLoopConfig:
    """The MAML inner loop (``metarl.adapt``) used during meta-training."""

    steps: int = bounded(1, ge=1)
    """Number of inner gradient steps per task."""
    lr: float = bounded(0.01, gt=0.0)
    """Inner learning rate alpha."""
    first_order: bool = False
    """Drop the second-order terms of the meta-gradient (first-order MAML)."""


@dataclass(frozen=True)
class MLPConfig:
    """A multi-layer perceptron."""

    hidden_sizes: tuple[int, ...] = bounded((40, 40), ge=1)
    """Width of each hidden layer."""
    activation: Literal["relu", "tanh"] = "relu"
    """Nonlinearity after each hidden layer."""


# --------------------------------------------------------------------------- sinusoid


@dataclass(frozen=True)
class SinusoidTaskConfig:
    """The sinusoid task distribution of the MAML paper (section 5.1)."""

    amplitude: tuple[float, float] = bounded((0.1, 5.0), ge=0.0)
    """Amplitude range, sampled uniformly."""
    phase: tuple[float, float] = (0.0, math.pi)
    """Phase range in radians, sampled uniformly."""
    x_range: tuple[float, float] = (-5.0, 5.0)
    """Input range, sampled uniformly."""
    k_support: int = bounded(10, ge=1)
    """Support points per task (K) during meta-training."""
    k_query: int = bounded(10, ge=1)
    """Query points per task during meta-training."""


@dataclass(frozen=True)
class SinusoidEvalConfig:
    """Adaptation-curve evaluation on held-out sinusoid tasks."""

    num_tasks: int = bounded(600, ge=2)
    """Held-out tasks per curve."""
    max_steps: int = bounded(10, ge=0)
    """Curves report the loss after 0..max_steps inner steps."""
    shots: tuple[int, ...] = bounded((5, 10, 20), ge=1)
    """Support-set sizes K to evaluate."""
    query_points: int = bounded(100, ge=1)
    """Query points per task on which the loss is measured."""
    lr: float | None = bounded(None, gt=0.0)
    """Fine-tuning learning rate; null means the training inner lr."""
    seed: int = bounded(10_000, ge=0)
    """Seed of the held-out task stream (kept apart from the training seed)."""


@dataclass(frozen=True)
class SinusoidConfig:
    """Sinusoid regression, exactly as the MAML paper (section 5.1)."""

    kind: Literal["sinusoid"] = "sinusoid"
    """Experiment type."""
    method: Literal["maml", "pretrained"] = "maml"
    """``maml``: meta-train; ``pretrained``: one network trained on all tasks jointly."""
    seed: int = bounded(0, ge=0)
    """Seed of every random stream of the run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where meta-training and evaluation compute; tasks are drawn on the CPU, so a seed gives
    the same data on every device. auto: CUDA if available, else the CPU; cuda on a machine
    without it is an error. Checkpoints hold CPU tensors and load on any device (--device on
    train and evaluate overrides this key)."""
    iterations: int = bounded(70_000, ge=1)
    """Outer (meta) iterations."""
    meta_batch_size: int = bounded(25, ge=1)
    """Tasks per meta-iteration."""
    meta_lr: float = bounded(1e-3, gt=0.0)
    """Adam learning rate of the outer loop."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point precision of weights and data."""
    inner: InnerLoopConfig = field(default_factory=InnerLoopConfig)
    """Inner loop (used by ``maml``; ``pretrained`` uses its lr to fine-tune at test time)."""
    model: MLPConfig = field(default_factory=MLPConfig)
    """The regressor: 1 -> hidden -> 1."""
    task: SinusoidTaskConfig = field(default_factory=SinusoidTaskConfig)
    """Task distribution."""
    eval: SinusoidEvalConfig = field(default_factory=SinusoidEvalConfig)
    """Evaluation settings for ``metarl evaluate``."""
    log_every: int = bounded(100, ge=1)
    """Iterations between log rows."""
    checkpoint_every: int = bounded(1000, ge=1)
    """Iterations between checkpoints (one is always written at the end)."""
    checkpoint_keep: int = bounded(0, ge=0)
    """Checkpoints kept besides checkpoint.pt (always the latest): the last ``checkpoint_keep`` as
    checkpoint_<iteration>.pt, and the best as checkpoint_best.pt, by the lowest post-adaptation
    query loss (``pretrained``: training loss) averaged over the iterations since the previous
    checkpoint. 0: checkpoint.pt only. ``metarl evaluate RUNDIR --checkpoint best|last|N`` picks
    one."""


# --------------------------------------------------------------------------- meta-RL


@dataclass(frozen=True)
class EnvConfig:
    """The task environment."""

    id: str = "metarl/Navigation2D-v0"
    """Gymnasium id of a task env: a registered one (``metarl/...``), or a user's own named
    with what registers it: ``path/to/file.py:mine/Id-v0`` (the file, relative to the working
    directory or absolute, is imported first; worker processes and Ray actors import it again
    by that path) or ``module:mine/Id-v0`` (the module is imported from the Python path, which
    the ``metarl`` command extends by the working directory)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the env's constructor, ``gymnasium.make(id, **kwargs)``, given
    alike to single envs and to the env's batched vector env, in every sampler backend: e.g.
    ``{frame_skip: 2}`` steps the MuJoCo envs at the paper's 0.02 s (Ant) instead of 0.05 s.
    ``max_episode_steps`` is ``horizon``; ``task``/``tasks`` come from the task distribution."""
    horizon: int = bounded(100, ge=1)
    """Maximum steps per episode (episodes also end at the env's own time limit)."""
    normalize_actions: bool = True
    """The policy acts in [-1, 1]^d, mapped affinely onto the env's action bounds and clipped
    there (the paper's rllab ``normalize``; Navigation2D's +-0.1 bounds scale actions by 0.1).
    False: the policy acts in the env's own units (clipped to its bounds)."""


@dataclass(frozen=True)
class SamplerConfig:
    """How episodes are collected."""

    backend: Literal["local", "processes", "ray"] = "local"
    """``local``: sub-envs stepped in this process (batched envs use their own vector env);
    ``processes``: sub-envs split over ``num_workers`` worker processes that only step envs;
    ``ray``: ``num_workers`` Ray actors, each owning whole tasks' envs and acting with the
    shipped weights (needs ``pip install -e '.[ray]'``). All give the same episodes."""
    num_workers: int = bounded(2, ge=1)
    """Worker processes (``processes``) or Ray actors (``ray``; at most the number of tasks)."""
    ray_address: str | None = None
    """``ray``: the cluster to join (``auto``, ``host:port`` or ``ray://host:port``); ``null``
    starts a local Ray bound to 127.0.0.1 (or uses one this process already initialised)."""
    ray_timeout_s: float = bounded(300.0, gt=0.0)
    """``ray``: seconds a worker may take over one slice before it counts as hung and is
    replaced."""
    ray_max_retries: int = bounded(3, ge=0)
    """``ray``: replacements of a dead or hung worker allowed within one sampling call."""


@dataclass(frozen=True)
class PolicyConfig:
    """The policy: a network and a distribution head (Gaussian with a learned,
    state-independent log-std for Box actions; categorical for Discrete ones). By default the
    network is the paper's MLP: two hidden layers of 100 ReLU units."""

    hidden_sizes: tuple[int, ...] = bounded((100, 100), ge=1)
    """Width of each hidden layer of the default MLP (unused with ``network``)."""
    activation: Literal["relu", "tanh"] = "relu"
    """Nonlinearity after each hidden layer of the default MLP (unused with ``network``)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the actions (state-independent, learned)."""
    network: str | None = None
    """Your own network instead of the MLP: ``"module:function"``, a factory called as
    ``function(obs_dim, out_dim, **network_kwargs)`` that returns a ``torch.nn.Module``
    mapping observations ``[..., obs_dim]`` to the head's inputs ``[..., out_dim]`` (the action
    means, or the logits). The module is found on the Python path (the metarl command adds the
    working directory); it is applied with ``torch.func.functional_call`` and ``vmap``, so it
    must be pure in its inputs and keep its weights in parameters. Its initial weights are its
    own initialisation, run under a seed from the run's seed. null: the default MLP."""
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the ``network`` factory (a mapping, e.g. ``{width: 64}``)."""


@dataclass(frozen=True)
class TRPOConfig:
    """The outer TRPO step on the meta-objective."""

    max_kl: float = bounded(0.01, gt=0.0)
    """Trust region: the mean KL a step may reach."""
    damping: float = bounded(1e-5, ge=0.0)
    """Added to the Hessian-vector product: (H + damping I) v."""
    cg_iters: int = bounded(10, ge=1)
    """Conjugate-gradient iterations."""
    hvp: Literal["finite_difference", "exact", "gauss_newton"] = "finite_difference"
    """Hessian-vector products of the meta-KL: finite differences of its gradients (the paper's,
    re-adapting at theta +- eps v), exact double backprop, or gauss_newton: J^T F J v with F the
    Fisher of the adapted policies (exactly the Hessian at the old weights, where TRPO needs it;
    the fastest)."""
    fd_base_eps: float = bounded(1.0, gt=0.0)
    """Finite-difference scale: eps = fd_base_eps / (|theta| + 1e-8). The paper's 1e-5 gives
    products unrelated to the Hessian for a ReLU policy in float32 (rounding, and the ReLU kinks
    the origin sits on at initialisation); see metarl.rl.trpo.DEFAULT_FD_BASE_EPS."""
    backtrack_ratio: float = bounded(0.8, gt=0.0, lt=1.0)
    """Line-search shrink factor."""
    max_backtracks: int = bounded(15, ge=1)
    """Line-search tries before the step is rejected."""
    hvp_subsample: float = bounded(1.0, gt=0.0, le=1.0)
    """Fraction of every task's episodes (at least one) whose KL curvature the Hessian-vector
    products use, as rllab's subsample_factor (the TRPO paper used 10% of the data): with MAML
    the KL is taken on that share of every task's valid episodes, each task still adapted on
    all its train episodes (so the adaptation is exact; adapting on the share too ruined
    training at inner lr 0.5). 1.0, the paper's, uses all. The gradient and the line search's
    KL check always use every episode, and the step length comes from the KL on all of them.
    Since the products' cost is mostly the adaptation's, 0.1 saves little: a Navigation2D
    meta-iteration at the paper's size took 3.84 s against 5.49 s (finite_difference), 5.32
    against 5.63 s (exact) and 1.76 against 1.87 s (gauss_newton)."""
    accelerator: bool = True
    """true: for the default MLP policy, the meta-KL gradients that finite-difference products
    difference and the gauss_newton products (with hvp_subsample 1 also the meta-gradient,
    from the products' passes) come from hand-derived MLP calculus (metarl.rl.mlp_accelerator;
    at the paper's Navigation2D size 1.27x and 2.3x faster per meta-iteration); every other
    network, and exact products, use the generic torch.func path. false (or off): always the
    generic path."""


@dataclass(frozen=True)
class RLEvalConfig:
    """Adaptation-curve evaluation on held-out tasks."""

    num_tasks: int = bounded(40, ge=2)
    """Held-out tasks."""
    episodes_per_task: int = bounded(40, ge=1)
    """Sub-envs per task and per gradient step: a task's test batch holds this many episodes
    with ``batch: episodes``, and this many times ``env.horizon`` env steps with ``batch:
    steps`` (the paper's 4000: 40 sub-envs for 2-D navigation, 20 for the MuJoCo tasks)."""
    batch: Literal["steps", "episodes"] = "steps"
    """What a task's test batch holds. ``steps``: the paper's (rllab's vectorized sampler):
    the sub-envs run episodes back to back until the episodes that have ended hold
    ``episodes_per_task x env.horizon`` env steps; those still running are dropped.
    ``episodes``: one episode per sub-env. The two are the same batch when no episode ends
    early; when some do (a navigation goal reached, an ant out of its healthy height),
    ``steps`` gives a task more, shorter episodes, and its mean return favours the short
    ones."""
    max_steps: int = bounded(3, ge=0)
    """Curves report the return after 0..max_steps policy-gradient steps."""
    lr: tuple[float, ...] | None = bounded(None, gt=0.0)
    """Inner lr of each test step, the last value repeating; null: the training inner lr for
    the first step and half of it after, as the paper's test scripts (0.5 then 0.25 for 2-D
    navigation, 0.1 then 0.05 for the MuJoCo tasks; their baselines had rates of their own)."""
    seed: int = bounded(10_000, ge=0)
    """Seed of the held-out task stream (kept apart from the training stream)."""


@dataclass(frozen=True)
class RLConfig:
    """MAML-TRPO meta-reinforcement learning (MAML paper, section 5.3)."""

    kind: Literal["rl"] = "rl"
    """Experiment type."""
    method: Literal["maml", "pretrained", "random", "oracle"] = "maml"
    """``maml``: MAML-TRPO. The paper's baselines: ``pretrained`` (trained on tasks of the
    distribution, no adaptation; TRPO, or Adam: ``optimizer``), ``random`` (the initial
    weights, untrained), ``oracle`` (the same training with the task appended to the
    observation)."""
    seed: int = bounded(0, ge=0)
    """Seed of every random stream of the run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the learner computes (adaptation, the outer step, evaluation's fine-tuning); the
    envs step on the CPU. auto: CUDA if available, else the CPU; cuda on a machine without it is
    an error. Checkpoints hold CPU tensors and load on any device (--device on train and
    evaluate overrides this key)."""
    iterations: int = bounded(100, ge=1)
    """Meta-iterations (outer TRPO steps)."""
    meta_batch_size: int = bounded(20, ge=1)
    """Tasks per meta-iteration."""
    episodes_per_task: int = bounded(20, ge=1)
    """Episodes per task for adaptation and for the meta-update (the paper's fast batch)."""
    batch: Literal["steps", "episodes"] = "steps"
    """What a meta-batch holds. ``steps``: the paper's meta-training sampler (rllab's vectorized
    sampler with one sub-env per task): every task's sub-env runs episodes back to back until
    the episodes that have ended hold ``meta_batch_size x episodes_per_task x env.horizon`` env
    steps in all; those still running are dropped. ``episodes``: ``episodes_per_task``
    episodes of every task (one per sub-env). The same batch when no episode ends early; when
    some do, ``steps`` still gives each task about ``episodes_per_task x env.horizon`` steps,
    in more, shorter episodes. Applies to the train and the valid episodes of every method. A
    run saved without this key predates it and resumes with ``episodes``."""
    optimizer: Literal["trpo", "adam"] = "trpo"
    """The update of the ``pretrained`` and ``oracle`` baselines. ``trpo``: a TRPO step
    (``trpo.*``). ``adam``: one full-batch Adam step per iteration on the policy-gradient loss
    of the tasks' episodes, learning rate ``adam_lr``: the paper's 2-D navigation
    ``pretrained`` baseline (MAML's code with ``use_maml=False``: rllab's first-order optimizer,
    Adam at 1e-3, one epoch of one batch). ``maml`` meta-trains with TRPO only."""
    adam_lr: float = bounded(1e-3, gt=0.0)
    """Learning rate of ``optimizer: adam`` (betas 0.9 and 0.999, eps 1e-8)."""
    gamma: float = bounded(0.99, gt=0.0, le=1.0)
    """Discount factor."""
    gae_lambda: float = bounded(1.0, ge=0.0, le=1.0)
    """GAE lambda (1.0: Monte Carlo returns minus the baseline)."""
    normalize_advantages: bool = True
    """Standardise advantages per task (as the paper's code)."""
    bootstrap_truncated: bool = False
    """An episode cut by the time limit continues with the baseline's value of its last
    observation in the advantages; false (the paper's code): every episode ends with value 0."""
    advantage_scope: Literal["task", "batch"] = "task"
    """What the linear baseline is fitted to, and the advantages standardised over, when the
    ``pretrained`` and ``oracle`` baselines train. ``task``: each task's own episodes, as in
    every MAML step. ``batch``: all the iteration's episodes together, as the paper's TRPO for
    its MuJoCo baselines did (one baseline for 100 episodes, each of its own task; with
    ``episodes_per_task: 1`` this is that batch). MAML adapts and meta-trains per task, and
    evaluation fine-tunes per task, whatever this key says."""
    inner: InnerLoopConfig = field(default_factory=lambda: InnerLoopConfig(lr=0.5))
    """Inner loop: vanilla policy gradient."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Task environment."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Episode collection."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Policy network."""
    trpo: TRPOConfig = field(default_factory=TRPOConfig)
    """Outer loop."""
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    """Evaluation settings for ``metarl evaluate``."""
    log_every: int = bounded(1, ge=1)
    """Iterations between log rows."""
    checkpoint_every: int = bounded(1, ge=1)
    """Iterations between checkpoints (one is always written at the end)."""
    checkpoint_keep: int = bounded(0, ge=0)
    """Checkpoints kept besides checkpoint.pt (always the latest): the last ``checkpoint_keep`` as
    checkpoint_<iteration>.pt, and the best as checkpoint_best.pt, by the highest
    post-adaptation return (``maml``; the other methods: the pre-adaptation return) averaged
    over the iterations since the previous checkpoint. 0: checkpoint.pt only. ``metarl evaluate
    RUNDIR --checkpoint best|last|N`` picks one."""
    learner_threads: int = bounded(1, ge=1)
    """Torch intra-op threads for the learner's adaptation and outer step (sampling always
    uses one: its forwards are small, and sampler workers step envs meanwhile). With idle
    cores, 2 or more makes the outer step faster (Navigation2D: about 1.6x with 2 on this
    2-core machine); the last bits of the results depend on the thread count."""


# --------------------------------------------------------------------------- Omniglot


@dataclass(frozen=True)
class OmniglotDataConfig:
    """Where the Omniglot images come from and how the characters are split."""

    root: str = "data/omniglot"
    """Folder with the standard distribution: images_background.zip and images_evaluation.zip,
    or their unpacked folders (<split>/<Alphabet>/<character>/*.png). Never downloaded."""
    cache_dir: str | None = "~/.cache/metarl/omniglot"
    """Folder for the preprocessed 28x28 images (one .npz, keyed by the sources' sizes and
    modification times); null: decode the PNGs on every start."""
    train_characters: int = bounded(1200, ge=1)
    """Meta-training characters: the first of all characters sorted by path (images_background
    first); the rest are the meta-test characters. Each gives 4 classes (0/90/180/270 degrees)."""


@dataclass(frozen=True)
class FewShotTaskConfig:
    """An N-way K-shot classification task."""

    ways: int = bounded(5, ge=2)
    """Classes per task (N)."""
    shots: int = bounded(1, ge=1)
    """Support images per class (K)."""
    query: int = bounded(15, ge=1)
    """Query images per class during meta-training (the adapted weights are scored on them)."""


@dataclass(frozen=True)
class ConvNetConfig:
    """The paper's conv net: blocks of 3x3 conv, batch norm, ReLU, 2x2 down-sampling."""

    hidden: int = bounded(64, ge=1)
    """Filters per convolution."""
    blocks: int = bounded(4, ge=1)
    """Conv blocks."""
    downsample: Literal["stride", "max_pool"] = "stride"
    """``stride``: stride-2 convolutions (the paper's Omniglot code); ``max_pool``: 2x2 max-pool
    after each block (about 4x the compute)."""


@dataclass(frozen=True)
class OmniglotEvalConfig:
    """Accuracy after 0..max_steps steps on held-out tasks of the meta-test characters."""

    num_tasks: int = bounded(600, ge=2)
    """Held-out tasks."""
    max_steps: int = bounded(3, ge=0)
    """Curves report the accuracy after 0..max_steps inner steps."""
    query: int = bounded(15, ge=1)
    """Query images per class of a held-out task."""
    lr: float | None = bounded(None, gt=0.0)
    """Fine-tuning learning rate; null means the training inner lr."""
    seed: int = bounded(10_000, ge=0)
    """Seed of the held-out task stream (kept apart from the training seed)."""


@dataclass(frozen=True)
class OmniglotConfig:
    """Few-shot Omniglot classification with MAML (paper, section 5.2)."""

    kind: Literal["omniglot"] = "omniglot"
    """Experiment type."""
    seed: int = bounded(0, ge=0)
    """Seed of every random stream of the run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where meta-training and evaluation compute; tasks are drawn on the CPU, so a seed gives
    the same data on every device. auto: CUDA if available, else the CPU; cuda on a machine
    without it is an error. Checkpoints hold CPU tensors and load on any device (--device on
    train and evaluate overrides this key)."""
    iterations: int = bounded(60_000, ge=1)
    """Outer (meta) iterations."""
    meta_batch_size: int = bounded(32, ge=1)
    """Tasks per meta-iteration."""
    meta_lr: float = bounded(1e-3, gt=0.0)
    """Adam learning rate of the outer loop."""
    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point precision of weights and images."""
    vectorize_inner: bool = True
    """Adapt all tasks of a meta-batch in one ``torch.func.vmap`` call (fastest on a CPU for
    small support sets, e.g. 5-way 1-shot); false: one task after another (faster for 5-shot
    and 20-way). Same numbers either way."""
    inner: InnerLoopConfig = field(default_factory=lambda: InnerLoopConfig(lr=0.4))
    """Inner loop: cross-entropy on the support set."""
    model: ConvNetConfig = field(default_factory=ConvNetConfig)
    """The classifier."""
    data: OmniglotDataConfig = field(default_factory=OmniglotDataConfig)
    """The images and the train/test split of the characters."""
    task: FewShotTaskConfig = field(default_factory=FewShotTaskConfig)
    """Tasks of meta-training (evaluation uses the same ways and shots)."""
    eval: OmniglotEvalConfig = field(default_factory=OmniglotEvalConfig)
    """Evaluation settings for ``metarl evaluate``."""
    log_every: int = bounded(50, ge=1)
    """Iterations between log rows."""
    checkpoint_every: int = bounded(500, ge=1)
    """Iterations between checkpoints (one is always written at the end)."""
    checkpoint_keep: int = bounded(0, ge=0)
    """Checkpoints kept besides checkpoint.pt (always the latest): the last ``checkpoint_keep`` as
    checkpoint_<iteration>.pt, and the best as checkpoint_best.pt, by the highest
    post-adaptation query accuracy averaged over the iterations since the previous checkpoint.
    0: checkpoint.pt only. ``metarl evaluate RUNDIR --checkpoint best|last|N`` picks one."""


ExperimentConfig = SinusoidConfig | RLConfig | OmniglotConfig
"""Any top-level experiment config."""

CONFIG_KINDS: dict[str, type[Any]] = {
    "sinusoid": SinusoidConfig,
    "rl": RLConfig,
    "omniglot": OmniglotConfig,
}
"""Top-level config class for each ``kind``."""

DEFAULT_KIND = "rl"


# --------------------------------------------------------------------------- docs


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, str(tp)
    )


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key}': value {value!r} is not allowed; expected {allowed}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _bad(key, value, "a mapping of sub-keys")
        return _build(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise _bad(key, value, _type_name(tp))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise _bad(key, value, f"one of {_type_name(tp)}")
        return value
    if origin is tuple:
        return _coerce_tuple(key, value, tp)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad(key, value, "a mapping of names to values")
        return dict(value)
    return _coerce_scalar(key, value, tp)


def _coerce_tuple(key: str, value: Any, tp: Any) -> tuple[Any, ...]:
    args = typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise _bad(key, value, _type_name(tp))
    if len(args) == 2 and args[1] is Ellipsis:
        if len(value) == 0:
            raise _bad(key, value, f"{_type_name(tp)}, not empty")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if len(value) != len(args):
        raise _bad(key, value, _type_name(tp))
    return tuple(
        _coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _coerce_scalar(key: str, value: Any, tp: Any) -> Any:
    if tp is type(None):
        if value is not None:
            raise _bad(key, value, "null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise _bad(key, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(key, value, "a number")
        if not math.isfinite(value):
            raise _bad(key, value, "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _bad(key, value, "a string")
        return value
    raise TypeError(f"config: unsupported annotation {tp!r} for key '{key}'")


_BOUND_TESTS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_BOUND_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _check_bounds(key: str, value: Any, bounds: Mapping[str, float]) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v is None:
            continue
        for name, bound in bounds.items():
            if not _BOUND_TESTS[name](v, bound):
                allowed = " and ".join(f"{_BOUND_SIGNS[n]} {b:g}" for n, b in bounds.items())
                raise _bad(key, value, f"values {allowed}")


def _unknown(key: str, name: str, allowed: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean '{key}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}{name}'{hint}; allowed: {', '.join(allowed)}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            raise _unknown(prefix, str(name), list(fields))
        key = f"{prefix}{name}"
        kwargs[name] = _coerce(key, value, hints[name])
        _check_bounds(key, kwargs[name], fields[name].metadata.get("bounds", {}))
    obj = cls(**kwargs)
    _check_ordered_ranges(obj, prefix)
    return obj


def _check_ordered_ranges(obj: Any, prefix: str) -> None:
    """A ``(low, high)`` pair of floats must have low <= high."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if hints[f.name] == tuple[float, float]:
            low, high = getattr(obj, f.name)
            if low > high:
                raise _bad(f"{prefix}{f.name}", [low, high], "a range [low, high] with low <= high")


# --------------------------------------------------------------------------- public API


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """Build and validate the experiment config a plain mapping describes."""
    kind = data.get("kind", DEFAULT_KIND)
    if kind not in CONFIG_KINDS:
        raise _bad("kind", kind, f"one of {', '.join(map(repr, CONFIG_KINDS))}")
    config = _build(CONFIG_KINDS[kind], data)
    if isinstance(config, RLConfig) and config.optimizer != "trpo" and config.method == "maml":
        raise ConfigError(
            f"optimizer: {config.optimizer} updates the pretrained and oracle baselines; "
            "method maml meta-trains with TRPO (optimizer: trpo)"
        )
    if (
        isinstance(config, RLConfig)
        and config.advantage_scope != "task"
        and config.method not in ("pretrained", "oracle")
    ):
        raise ConfigError(
            f"advantage_scope: {config.advantage_scope} trains the pretrained and oracle "
            f"baselines; method {config.method} needs advantage_scope: task"
        )
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into its key path and YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. inner.lr=0.05)")
    if not raw.strip():
        return key.strip().split("."), ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(
            f"override {text!r}: the value {raw!r} is not valid YAML ({problem}); "
            "quote a string, write a list as [1, 2]"
        ) from None
    return key.strip().split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override set (nested via dots)."""
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    return data


BASE_KEY = "base"
"""A config file may name another (relative to itself) whose keys it extends and overrides."""


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, resolving its ``base`` chain (deep merge, this file winning)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config file {str(path)!r} is its own base (a cycle)")
    data = read_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise _bad(BASE_KEY, base, "the path of another config file")
    return _merge(read_config_file(path.parent / base, (*_seen, path)), data)


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for key, value in top.items():
        old = out.get(key)
        out[key] = (
            _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return out


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, saved: bool = False
) -> Any:
    """Load a config from YAML (or the built-in default when ``path`` is None) plus overrides.

    ``saved``: the file is a run's own ``config.yaml``; a key it lacks because the run predates
    the key takes the value that meant the run's behaviour (:data:`SAVED_BEFORE_KEY`)."""
    data = read_config_file(path) if path is not None else {}
    if saved:
        data = saved_config_data(data)
    return config_from_dict(apply_overrides(data, overrides))


SAVED_BEFORE_KEY: dict[str, dict[str, Any]] = {"rl": {"batch": "episodes"}}
"""Per config kind, keys added after runs were saved, with the value that gives a run saved
without the key the behaviour it was trained with. A run directory's ``config.yaml`` and a
checkpoint hold every key of their time, so a key missing there means the run predates it."""


def saved_config_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config's mapping with the keys it predates set as :data:`SAVED_BEFORE_KEY` says."""
    out = dict(data)
    for key, value in SAVED_BEFORE_KEY.get(str(out.get("kind", DEFAULT_KIND)), {}).items():
        out.setdefault(key, value)
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-ready mapping of a config (tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(dataclasses.asdict(config))
    return result


def save_config(config: Any, path: str | Path) -> None:
    """Write a config as YAML (the run directory's record of what ran), atomically."""
    with replacing(path) as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def config_diff(a: Any, b: Any) -> list[str]:
    """Dotted keys whose values differ between two configs of the same kind."""

    def walk(x: Any, y: Any, prefix: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted(set(x) | set(y))
            return [d for k in keys for d in walk(x.get(k), y.get(k), f"{prefix}{k}.")]
        return [] if x == y else [prefix.rstrip(".")]

    return walk(config_to_dict(a), config_to_dict(b), "")


def with_overrides(config: T, overrides: Sequence[str]) -> T:
    """A copy of ``config`` with ``key=value`` overrides, validated like a loaded file."""
    result: T = config_from_dict(apply_overrides(config_to_dict(config), overrides))
    return result
