"""The RL learners the trainer drives: MAML-TRPO (the paper's Algorithm 3: one meta-iteration
is sample -> adapt -> sample -> TRPO) and the paper's baselines (``pretrained`` and ``oracle``:
plain TRPO; ``random``: the initial weights).

Data goes one way: task env -> sampler -> episodes -> adaptation -> outer step -> stats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import torch

from metarl.config import ConfigError, RLConfig
from metarl.devices import cpu_copy, resolve_device, synchronize, to_cpu, to_device
from metarl.optim import restore_weights_and_optimizer
from metarl.rl.episodes import EpisodeBatch, episode_columns
from metarl.rl.losses import (
    compute_advantages,
    masked_mean,
    surrogate_loss,
    task_mean_vpg_loss,
    task_rows,
)
from metarl.rl.maml_trpo import (
    MetaBatch,
    TaskAdaptation,
    adapt_meta_batch,
    curvature_episodes,
    meta_trpo_step,
)
from metarl.rl.policies import (
    CategoricalHead,
    GaussianHead,
    Head,
    NetworkSpec,
    Params,
    Policy,
    PolicySpec,
)
from metarl.rl.sampling import make_sampler
from metarl.rl.sampling.base import EpisodeSampler
from metarl.rl.sampling.envs import make_env
from metarl.rl.sampling.step_budget import sample_shared_budget
from metarl.rl.trpo import trpo_step
from metarl.rngs import Rngs
from metarl.tasks import TaskEnv


def make_policy(config: RLConfig, env: gym.Env[Any, Any]) -> Policy:
    """The policy for ``env``'s spaces: Gaussian for Box actions, categorical for Discrete;
    on ``policy.network`` or the default MLP. A network that cannot be built, or whose output
    does not fit the head, is a :class:`ConfigError` naming ``policy.network``."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{config.env.id}: observations must be a flat Box, got {obs_space}")
    p = config.policy
    head: Head
    if isinstance(act_space, gym.spaces.Discrete):
        head = CategoricalHead(num_actions=int(act_space.n))
    elif isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        head = GaussianHead(act_dim=int(act_space.shape[0]), init_log_std=p.init_log_std)
    else:
        raise ValueError(f"{config.env.id}: unsupported action space {act_space}")
    network = NetworkSpec(
        hidden_sizes=p.hidden_sizes, activation=p.activation, factory=p.network,
        kwargs=dict(p.network_kwargs),
    )  # fmt: skip
    spec = PolicySpec(obs_dim=int(obs_space.shape[0]), head=head, network=network)
    if p.network is None:
        return spec.build()
    return _user_policy(spec)


def _user_policy(spec: PolicySpec) -> Policy:
    """``spec.build()`` for a user network, checked on a batch of observations."""
    key = f"config key 'policy.network' ({spec.network.factory!r})"
    try:
        policy = spec.build()
        out = policy.network_output(policy.params(), torch.zeros(3, spec.obs_dim))
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None
    except Exception as err:  # a user's factory or module that fails
        raise ConfigError(f"{key}: {type(err).__name__}: {err}") from None
    if tuple(out.shape) != (3, spec.head.out_dim):
        raise ConfigError(
            f"{key}: the network maps observations [3, {spec.obs_dim}] to "
            f"{list(out.shape)}; the policy head needs [3, {spec.head.out_dim}]"
        )
    return policy


def task_env(env: gym.Env[Any, Any], env_id: str) -> TaskEnv:
    """The unwrapped env, checked to follow the task protocol."""
    inner = env.unwrapped
    if not isinstance(inner, TaskEnv):
        raise TypeError(
            f"{env_id} is not a task env: it needs sample_tasks(num_tasks, rng), "
            "set_task(task) and a task property (see README 'Your own task env')"
        )
    return inner


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def advantages_of(config: RLConfig, episodes: EpisodeBatch) -> torch.Tensor:
    """The advantages of ``episodes`` as ``config`` defines them."""
    return compute_advantages(
        episodes,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        normalize=config.normalize_advantages,
        bootstrap_truncated=config.bootstrap_truncated,
    )


def training_advantages(config: RLConfig, episodes: EpisodeBatch) -> torch.Tensor:
    """The advantages a trained baseline (``pretrained``, ``oracle``) learns from: per task, or
    with ``advantage_scope: batch`` from one baseline fitted to all the episodes and
    standardised over them (the same ``[T, N]`` layout either way)."""
    if config.advantage_scope == "batch":
        pooled = dataclasses.replace(episodes, num_tasks=1, episodes_per_task=episodes.num_episodes)
        return advantages_of(config, pooled)
    return advantages_of(config, episodes)


def device_policies(config: RLConfig, env: gym.Env[Any, Any]) -> tuple[Policy, Policy]:
    """The policy on ``config.device`` (what the learner differentiates) and the one a sampler
    acts with on the CPU: the same object on a CPU device."""
    device = resolve_device(config.device)
    acting = make_policy(config, env)
    return (acting if device.type == "cpu" else make_policy(config, env).to(device)), acting


class PolicyLearner:
    """What every RL learner holds: the task env, the policy and its weights (on
    ``config.device``), the sampler (on the CPU).

    Subclasses implement ``step``. The oracle method sees the task in its observations.
    """

    def __init__(self, config: RLConfig, rngs: Rngs) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        oracle = config.method == "oracle"
        self._env = make_env(
            config.env.id,
            env_kwargs=config.env.kwargs,
            oracle=oracle,
            normalize_actions=config.env.normalize_actions,
        )
        self.tasks = task_env(self._env, config.env.id)
        self.policy, self._acting = device_policies(config, self._env)
        self.params: Params = to_device(self.policy.init_params(rngs.torch), self.device)
        self.sampler = make_sampler(
            config.sampler,
            env_id=config.env.id,
            env_kwargs=config.env.kwargs,
            num_tasks=config.meta_batch_size,
            episodes_per_task=config.episodes_per_task,
            horizon=config.env.horizon,
            oracle=oracle,
            normalize_actions=config.env.normalize_actions,
        )

    def advantages(self, episodes: EpisodeBatch) -> torch.Tensor:
        return advantages_of(self.config, episodes)

    def sample(
        self, params: Params, tasks: list[Any], rngs: Rngs, seed: int, *, per_task: bool = False
    ) -> EpisodeBatch:
        """Episodes of ``tasks`` acting with ``params`` (per-task weights ``[K, ...]`` when
        ``per_task``): the weights go to the sampler's CPU once, the episodes to the
        learner's device once."""
        sample = sample_shared_budget if self.config.batch == "steps" else _sampler_call
        batch = sample(
            self.sampler, self._acting, to_cpu(params), tasks, generator=rngs.torch, seed=seed,
            per_task_params=per_task,
        )  # fmt: skip
        return batch.to(self.device)

    def sample_with_theta(self, rngs: Rngs) -> tuple[list[Any], EpisodeBatch]:
        """Fresh tasks and episodes of them acting with the current weights."""
        tasks = self.tasks.sample_tasks(self.config.meta_batch_size, rngs.numpy)
        seed = int(rngs.numpy.integers(0, 2**31 - 1))
        return tasks, self.sample(self.params, tasks, rngs, seed)

    def timed_sample(self, rngs: Rngs) -> tuple[EpisodeBatch, float]:
        """:meth:`sample_with_theta`'s episodes and the wall seconds it took."""
        clock = time.perf_counter()
        _, batch = self.sample_with_theta(rngs)
        return batch, self._seconds_since(clock)

    def step(self, rngs: Rngs) -> dict[str, float]:
        raise NotImplementedError

    def _seconds_since(self, clock: float) -> float:
        """Wall seconds since ``clock``, the device's queued work included."""
        synchronize(self.device)
        return time.perf_counter() - clock

    def weights(self) -> Params:
        """A copy of the current weights on the CPU (what a checkpoint holds)."""
        return cpu_copy(self.params)

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.weights()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's weights (on any device) onto the learner's device."""
        self.params = {k: v.to(self.device, copy=True) for k, v in state["params"].items()}

    def close(self) -> None:
        self.sampler.close()
        self._env.close()


class RandomInitLearner(PolicyLearner):
    """The paper's ``random`` baseline: the initial weights, never trained (fine-tuned only at
    evaluation). ``step`` measures the return of those weights on fresh tasks."""

    def step(self, rngs: Rngs) -> dict[str, float]:
        episodes, t_sample = self.timed_sample(rngs)
        return {"pre_adapt_return": episodes.mean_return(), "time/sample_s": t_sample}


class TRPOLearner(PolicyLearner):
    """Plain TRPO on tasks drawn from the distribution, no adaptation: the paper's
    ``pretrained`` baseline (and, on the task-observing env, its ``oracle``)."""

    def step(self, rngs: Rngs) -> dict[str, float]:
        batch, t_sample = self.timed_sample(rngs)
        clock = time.perf_counter()
        adv = training_advantages(self.config, batch)
        rows = task_rows(batch, adv)  # the real steps only
        old = self.policy.detached_stats(self.params, rows.observations)

        def loss_fn(p: Params) -> torch.Tensor:
            return surrogate_loss(self.policy, p, rows, rows.advantages)

        def kl_fn(p: Params) -> torch.Tensor:
            return masked_mean(self.policy.kl(old, p, rows.observations), rows.mask)

        e = curvature_episodes(self.config.trpo.hvp_subsample, batch.episodes_per_task)
        cols = episode_columns(batch.num_tasks, batch.episodes_per_task, e)
        sub = (
            task_rows(batch.first_episodes(e), adv[:, cols])
            if e < batch.episodes_per_task
            else rows
        )
        sub_old = old if sub is rows else self.policy.detached_stats(self.params, sub.observations)

        def curvature_kl_fn(p: Params) -> torch.Tensor:
            return masked_mean(self.policy.kl(sub_old, p, sub.observations), sub.mask)

        with torch_threads(self.config.learner_threads):
            self.params, stats = trpo_step(
                self.params, loss_fn, kl_fn, self.config.trpo,
                curvature_kl_fn=curvature_kl_fn if e < batch.episodes_per_task else None,
            )  # fmt: skip
        return {
            "pre_adapt_return": batch.mean_return(),
            **{f"trpo/{k}": v for k, v in stats.as_dict().items()},
            "time/sample_s": t_sample,
            "time/trpo_s": self._seconds_since(clock),
        }


class AdamLearner(PolicyLearner):
    """The ``pretrained`` or ``oracle`` baseline with ``optimizer: adam``: one full-batch Adam
    step per iteration on the tasks' policy-gradient loss (mean over tasks of each task's mean),
    as the paper's 2-D navigation pretrained baseline was trained (MAML's code with
    ``use_maml=False``). The checkpoint holds the optimizer's moments, so a run resumes
    exactly."""

    def __init__(self, config: RLConfig, rngs: Rngs) -> None:
        super().__init__(config, rngs)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=config.adam_lr)

    def step(self, rngs: Rngs) -> dict[str, float]:
        batch, t_sample = self.timed_sample(rngs)
        clock = time.perf_counter()
        adv = training_advantages(self.config, batch)

        def loss_fn(p: Params) -> torch.Tensor:
            return task_mean_vpg_loss(self.policy, p, batch, adv)

        with torch_threads(self.config.learner_threads):
            grads, loss = torch.func.grad_and_value(loss_fn)(self.params)
            for name, param in self.params.items():
                param.grad = grads[name]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        grad_norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
        return {
            "pre_adapt_return": batch.mean_return(),
            "adam/loss": float(loss),
            "adam/grad_norm": float(grad_norm),
            "time/sample_s": t_sample,
            "time/adam_s": self._seconds_since(clock),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.weights(), "optimizer": cpu_copy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_weights_and_optimizer(self.params, self.optimizer, state, self.config.adam_lr)


class MAMLTRPOLearner(PolicyLearner):
    """Meta-trains a policy with MAML-TRPO; ``step`` is one meta-iteration."""

    def __init__(self, config: RLConfig, rngs: Rngs) -> None:
        super().__init__(config, rngs)
        self.inner = config.inner

    def meta_batch(self, rngs: Rngs) -> tuple[MetaBatch, TaskAdaptation, dict[str, float]]:
        """A meta-batch at the current weights: fresh tasks, their train episodes, the inner
        steps on them, the valid episodes of the adapted policies, the advantages of both;
        with the wall seconds spent sampling (``time/sample_s``) and adapting
        (``time/adapt_s``)."""
        clock = time.perf_counter()
        tasks = self.tasks.sample_tasks(self.config.meta_batch_size, rngs.numpy)
        seeds = rngs.numpy.integers(0, 2**31 - 1, size=2)
        train = self.sample(self.params, tasks, rngs, int(seeds[0]))
        t_sample = self._seconds_since(clock)
        clock = time.perf_counter()
        train_adv = self.advantages(train)
        with torch_threads(self.config.learner_threads):
            adaptation = adapt_meta_batch(self.policy, self.params, train, train_adv, self.inner)
        t_adapt = self._seconds_since(clock)
        clock = time.perf_counter()
        valid = self.sample(adaptation.params, tasks, rngs, int(seeds[1]), per_task=True)
        t_sample += self._seconds_since(clock)
        clock = time.perf_counter()
        batch = MetaBatch(
            train=train,
            train_advantages=train_adv,
            valid=valid,
            valid_advantages=self.advantages(valid),
            inner=self.inner,
        )
        t_adapt += self._seconds_since(clock)
        return batch, adaptation, {"time/sample_s": t_sample, "time/adapt_s": t_adapt}

    def step(self, rngs: Rngs) -> dict[str, float]:
        batch, adaptation, seconds = self.meta_batch(rngs)
        clock = time.perf_counter()
        with torch_threads(self.config.learner_threads):
            self.params, trpo_stats = meta_trpo_step(
                self.policy, self.params, batch, self.config.trpo, adaptation=adaptation
            )
        t_trpo = self._seconds_since(clock)
        counts = {}
        if self.config.batch == "steps":  # episodes per task vary: their mean over the tasks
            counts = {
                "train_episodes": float(batch.train.episode_counts().double().mean()),
                "valid_episodes": float(batch.valid.episode_counts().double().mean()),
            }
        return {
            "pre_adapt_return": batch.train.mean_return(),
            "post_adapt_return": batch.valid.mean_return(),
            **counts,
            **{f"trpo/{k}": v for k, v in trpo_stats.as_dict().items()},
            **seconds,
            "time/trpo_s": t_trpo,
        }


def _sampler_call(
    sampler: EpisodeSampler,
    policy: Policy,
    params: Params,
    tasks: list[Any],
    *,
    generator: torch.Generator,
    seed: int,
    per_task_params: bool = False,
) -> EpisodeBatch:
    """``episodes_per_task`` episodes of every task: one :meth:`EpisodeSampler.sample` call."""
    return sampler.sample(
        policy, params, tasks, generator=generator, seed=seed, per_task_params=per_task_params
    )


LEARNERS: dict[str, type[PolicyLearner]] = {
    "maml": MAMLTRPOLearner,
    "pretrained": TRPOLearner,
    "oracle": TRPOLearner,
    "random": RandomInitLearner,
}
"""The learner of each ``method``."""


def make_rl_learner(config: RLConfig, rngs: Rngs) -> PolicyLearner:
    """The learner for ``config.method`` (and, for the trained baselines, ``config.optimizer``)."""
    if config.optimizer == "adam" and config.method in ("pretrained", "oracle"):
        return AdamLearner(config, rngs)
    return LEARNERS[config.method](config, rngs)
