"""The paper's protocol: action normalization in the sampler, the paper configs' values,
advantages without a bootstrap at the time limit, and a test-time lr per compared run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from metarl.envs import NavigationTask

from metarl.cli import main
from metarl.config import RLConfig, load_config
from metarl.rl.baselines import fit_linear_baseline
from metarl.rl.episodes import EpisodeBatch, discounted_returns
from metarl.rl.losses import compute_advantages
from metarl.rl.policies import GaussianMLPPolicy
from metarl.rl.sampling.envs import make_env
from metarl.rl.sampling.local import Sampler

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def _navigation_batch(backend: str, normalize: bool, oracle: bool = False) -> EpisodeBatch:
    policy = GaussianMLPPolicy(obs_dim=4 if oracle else 2, act_dim=2, hidden_sizes=(8,))
    params = policy.init_params(torch.Generator().manual_seed(0))
    sampler = Sampler(
        env_id="metarl/Navigation2D-v0",
        num_tasks=2,
        episodes_per_task=3,
        horizon=12,
        backend=backend,  # type: ignore[arg-type]
        num_workers=2,
        oracle=oracle,
        normalize_actions=normalize,
    )
    tasks = [NavigationTask((0.4, -0.3)), NavigationTask((-0.2, 0.45))]
    with sampler:
        return sampler.sample(
            policy, params, tasks, generator=torch.Generator().manual_seed(1), seed=5
        )


@pytest.mark.parametrize(
    ("backend", "oracle"), [("local", False), ("processes", False), ("local", True)]
)
def test_sampler_moves_navigation_by_a_tenth_of_the_clipped_policy_action(
    backend: str, oracle: bool
) -> None:
    batch = _navigation_batch(backend, normalize=True, oracle=oracle)
    obs = batch.observations[..., :2].double()
    actions = batch.actions.double()
    moved = obs[1:] - obs[:-1]  # the move of step t is seen in the observation of step t + 1
    expected = 0.1 * actions[:-1].clamp(-1.0, 1.0)
    real = (batch.mask[1:] > 0).unsqueeze(-1).expand_as(moved)
    assert (actions.abs() > 1.0).any()  # unit-std noise: clipping happens
    torch.testing.assert_close(moved[real], expected[real], rtol=0, atol=1e-6)
    # without normalization the policy acts in the env's own units (clipped to +-0.1)
    raw = _navigation_batch(backend, normalize=False, oracle=oracle)
    raw_moved = raw.observations[1:, :, :2].double() - raw.observations[:-1, :, :2].double()
    raw_expected = raw.actions[:-1].double().clamp(-0.1, 0.1)
    real = (raw.mask[1:] > 0).unsqueeze(-1).expand_as(raw_moved)
    torch.testing.assert_close(raw_moved[real], raw_expected[real], rtol=0, atol=1e-6)


def test_normalized_processes_backend_equals_local_bitwise() -> None:
    local = _navigation_batch("local", normalize=True)
    procs = _navigation_batch("processes", normalize=True)
    for name in ("observations", "actions", "rewards", "mask", "log_probs"):
        assert torch.equal(getattr(local, name), getattr(procs, name)), name


# --------------------------------------------------------------------------- paper configs
# (file, iterations, tasks, episodes, horizon, inner lr, eval episodes, eval lr)
PAPER = {
    "halfcheetah_vel.yaml": (475, 40, 10, 200, 0.1, 20, (0.1, 0.05)),
    "halfcheetah_dir.yaml": (475, 40, 10, 200, 0.1, 20, (0.1, 0.05)),
    "ant_vel.yaml": (375, 40, 20, 200, 0.1, 20, (0.1, 0.05)),
    # the direction task's own test script (test_maml_ant_direc.py): itr_575 of a run with 40
    # episodes per task, 8000-step test batches, later steps at 0.01 times the first lr
    "ant_dir.yaml": (575, 40, 40, 200, 0.1, 40, (0.1, 0.001)),
    "ant_goal.yaml": (375, 40, 20, 200, 0.1, 20, (0.1, 0.05)),
}
BASELINE_EVAL_LR = {
    "halfcheetah_vel": {"pretrained": (0.02, 0.01), "random": (0.1, 0.05)},
    "halfcheetah_dir": {"pretrained": (0.02, 0.01), "random": (0.1, 0.05)},
    "ant_vel": {"pretrained": (0.2, 0.1), "random": (1.0, 0.5)},
    "ant_dir": {"pretrained": (0.2, 0.002), "random": (1.0, 0.01)},
    "ant_goal": {"pretrained": (0.2, 0.1), "random": (1.0, 0.5)},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_hold_the_papers_values(name: str) -> None:
    iters, tasks, episodes, horizon, lr, eval_eps, eval_lr = PAPER[name]
    c: RLConfig = load_config(CONFIGS / name)
    assert (c.method, c.iterations, c.meta_batch_size, c.episodes_per_task) == (
        "maml",
        iters,
        tasks,
        episodes,
    )
    assert (c.env.horizon, c.inner.lr, c.inner.steps, c.inner.first_order) == (
        horizon,
        lr,
        1,
        False,
    )
    assert (c.gamma, c.gae_lambda, c.normalize_advantages) == (0.99, 1.0, True)
    assert c.env.normalize_actions and not c.bootstrap_truncated
    assert c.batch == "steps"  # the paper's meta-training sampler: one shared step budget
    assert c.policy.hidden_sizes == (100, 100) and c.policy.activation == "relu"
    t = c.trpo
    assert (t.max_kl, t.damping, t.cg_iters, t.hvp, t.hvp_subsample) == (
        0.01,
        1e-5,
        10,
        "finite_difference",
        1.0,
    )
    assert (t.backtrack_ratio, t.max_backtracks, t.fd_base_eps) == (0.8, 15, 1.0)
    e = c.eval
    assert (e.num_tasks, e.episodes_per_task, e.max_steps, e.lr) == (40, eval_eps, 3, eval_lr)
    assert e.batch == "steps" and e.episodes_per_task * c.env.horizon == TEST_STEPS.get(name, 4000)
    env = make_env(c.env.id, env_kwargs=c.env.kwargs)
    assert env.unwrapped.dt == pytest.approx(PAPER_DT.get(name, 0.05))  # type: ignore[attr-defined]


# Seconds per env step where a config sets the paper's (rllab's ant: 0.02 s); the half-cheetah
# configs keep v5's 0.05 s (the paper's 0.01 s is env.kwargs.frame_skip=1, see
# results/halfcheetah_vel/README.md).
PAPER_DT = {"ant_vel.yaml": 0.02, "ant_dir.yaml": 0.02, "ant_goal.yaml": 0.02}
# Env steps per test batch where the paper's test script did not take 4000.
TEST_STEPS = {"ant_dir.yaml": 8000}
# The paper's MuJoCo baselines, trained on TRPO batches of their own (cluster_trpo_cheetah.py,
# cluster_trpo_ant.py: 100 episodes per iteration, each of its own task, one baseline for all),
# and for how many iterations.
BASELINE_BATCH = {
    "halfcheetah_vel": {"pretrained": (100, 1, 475), "oracle": (100, 1, 975)},
    "halfcheetah_dir": {"pretrained": (100, 1, 475), "oracle": (100, 1, 975)},
    "ant_vel": {"pretrained": (100, 1, 575), "oracle": (100, 1, 550)},
    "ant_dir": {"pretrained": (100, 1, 2000), "oracle": (100, 1, 1975)},
    "ant_goal": {"pretrained": (100, 1, 575), "oracle": (100, 1, 550)},
}


@pytest.mark.parametrize("method", ["", "_oracle"])
def test_ant_goal_observes_the_torso_position_as_the_papers_ant(method: str) -> None:
    """rllab's ant observed qpos whole; AntGoal's reward is the distance of the torso's (x, y)
    to the goal, so its configs put the position back into Ant-v5's observation."""
    c = load_config(CONFIGS / f"ant_goal{method}.yaml")
    env = make_env(c.env.id, env_kwargs=c.env.kwargs, oracle=c.method == "oracle")
    try:
        obs, _ = env.reset(seed=3)
        for _ in range(5):
            obs, *_ = env.step(env.action_space.sample())
        inner = env.unwrapped
        sim = getattr(inner, "env", inner).unwrapped  # an oracle's OracleEnv holds the env
        # (the oracle's observation is float32)
        np.testing.assert_allclose(obs[:2], sim.data.qpos[:2], rtol=1e-6, atol=1e-7)
        assert obs.shape[0] == 15 + 14 + 13 * 6 + (2 if method else 0)
    finally:
        env.close()
    for task in ("ant_vel", "ant_dir"):  # their rewards do not depend on the position
        assert (
            "exclude_current_positions_from_observation"
            not in load_config(CONFIGS / f"{task}.yaml").env.kwargs
        )


@pytest.mark.parametrize("task", sorted(BASELINE_EVAL_LR))
def test_paper_baseline_configs_differ_from_maml_only_where_the_paper_did(task: str) -> None:
    maml = load_config(CONFIGS / f"{task}.yaml")
    for method in ("pretrained", "random", "oracle"):
        c = load_config(CONFIGS / f"{task}_{method}.yaml")
        assert c.method == method
        assert (c.batch, c.env) == (maml.batch, maml.env)
        own = BASELINE_BATCH.get(task, {}).get(method)
        if own is None:
            assert c.advantage_scope == "task"
            assert (c.meta_batch_size, c.episodes_per_task) == (
                maml.meta_batch_size,
                maml.episodes_per_task,
            )
        else:
            assert (c.meta_batch_size, c.episodes_per_task, c.iterations) == own
            assert c.meta_batch_size * c.episodes_per_task * c.env.horizon == 20_000
            assert c.advantage_scope == "batch"
        if method in BASELINE_EVAL_LR[task]:
            assert c.eval.lr == BASELINE_EVAL_LR[task][method]
        assert (c.eval.episodes_per_task, c.eval.batch) == (
            maml.eval.episodes_per_task,
            maml.eval.batch,
        )
    assert load_config(CONFIGS / f"{task}_random.yaml").iterations == 1
    # The paper's MuJoCo baselines were trained with TRPO (cluster_trpo_*.py).
    assert load_config(CONFIGS / f"{task}_pretrained.yaml").optimizer == "trpo"
    assert load_config(CONFIGS / f"{task}_oracle.yaml").optimizer == "trpo"


def test_navigation_pretrained_takes_the_papers_adam_step() -> None:
    """MAML's code with use_maml=False, whose optimizer is one full-batch Adam step at 1e-3
    per iteration (the pretrained policy test_maml_point.py evaluates)."""
    c = load_config(CONFIGS / "navigation2d_pretrained.yaml")
    assert (c.optimizer, c.adam_lr, c.iterations) == ("adam", 1e-3, 100)


def test_navigation_oracle_is_trpo_point_py() -> None:
    """trpo_point.py (oracleenv2): TRPO on 1000 env steps per iteration, one linear baseline
    for the whole batch, 100 iterations."""
    c = load_config(CONFIGS / "navigation2d_oracle.yaml")
    assert (c.method, c.optimizer, c.advantage_scope, c.iterations) == (
        "oracle",
        "trpo",
        "batch",
        100,
    )
    assert c.meta_batch_size * c.episodes_per_task * c.env.horizon == 1000


# --------------------------------------------------------------------------- advantages


def test_without_bootstrap_advantages_are_monte_carlo_returns_minus_the_baseline() -> None:
    batch = _navigation_batch("local", normalize=True)
    assert bool(batch.truncated.all())  # 12 steps: every episode is cut by the horizon
    base = fit_linear_baseline(batch, 0.9)
    returns = discounted_returns(batch.rewards.double(), batch.mask.double(), 0.9)
    expected = (returns - base.values.double()) * batch.mask.double()
    adv = compute_advantages(batch, gamma=0.9, normalize=False, bootstrap_truncated=False)
    torch.testing.assert_close(adv.double(), expected, rtol=1e-5, atol=1e-5)
    # the bootstrap adds gamma^(L - t) V(s_L) on every step of a truncated episode
    boot = compute_advantages(batch, gamma=0.9, normalize=False, bootstrap_truncated=True)
    steps = torch.arange(batch.horizon, dtype=torch.float64).unsqueeze(1)
    lengths = batch.lengths.double().unsqueeze(0)
    extra = 0.9 ** (lengths - steps) * base.last_values.double().unsqueeze(0)
    torch.testing.assert_close(
        (boot - adv).double(), extra * batch.mask.double(), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- test-time lr

TINY = [
    "--set", "meta_batch_size=2", "--set", "episodes_per_task=2",
    "--set", "policy.hidden_sizes=[8]", "--set", "env.horizon=10",
    "--set", "iterations=1", "--set", "eval.num_tasks=3",
    "--set", "eval.episodes_per_task=2", "--set", "eval.max_steps=2", "--no-progress",
]  # fmt: skip


def _curve(path: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["method"], []).append(float(row["mean_return"]))
    return out


def test_each_compared_run_is_fine_tuned_with_its_own_eval_lr(tmp_path: Path) -> None:
    runs = {}
    for name, lr in (("a", "[0.5, 0.25]"), ("b", "[0.02, 0.01]"), ("c", "[0.02, 0.01]")):
        runs[name] = tmp_path / name
        args = ["train", "--out", str(runs[name]), *TINY, "--set", "method=random"]
        assert main([*args, "--set", f"eval.lr={lr}"]) == 0
    assert main(["evaluate", str(runs["b"])]) == 0
    alone = _curve(runs["b"] / "adaptation.csv")["random"]
    assert main(["evaluate", str(runs["a"]), "--compare", str(runs["c"])]) == 0
    both = list(csv.DictReader((runs["a"] / "adaptation.csv").open()))
    first = [float(r["mean_return"]) for r in both[:3]]
    second = [float(r["mean_return"]) for r in both[3:]]
    # same initial weights (seed 0) and tasks: equal before adapting, apart after
    assert first[0] == second[0] == alone[0]
    assert first[1:] != second[1:]
    # the compared run c is fine-tuned exactly as b alone (same lr, same weights)
    assert np.allclose(second, alone, rtol=0, atol=0)


def test_navigation_config_is_the_papers_point_protocol_and_the_built_in_default() -> None:
    c: RLConfig = load_config(CONFIGS / "navigation2d.yaml")
    assert (c.iterations, c.meta_batch_size, c.episodes_per_task, c.env.horizon) == (
        100,
        20,
        20,
        100,
    )
    assert (c.inner.lr, c.trpo.max_kl, c.trpo.hvp, c.trpo.hvp_subsample) == (
        0.5,
        0.01,
        "finite_difference",
        1.0,
    )
    assert c.env.normalize_actions and not c.bootstrap_truncated
    assert (c.eval.num_tasks, c.eval.episodes_per_task, c.eval.lr) == (40, 40, (0.5, 0.25))
    for method in ("pretrained", "random"):
        assert load_config(CONFIGS / f"navigation2d_{method}.yaml").eval.lr == (0.5, 0.25)
    # the built-in default is the same, and its eval lr rule (null) gives the paper's rates
    default = load_config(None)
    assert load_config(CONFIGS / "navigation2d.yaml", ["eval.lr=null"]) == default
    from metarl.rl.evaluation import step_lrs

    assert step_lrs(default.eval, default.inner.lr) == [0.5, 0.25, 0.25]
