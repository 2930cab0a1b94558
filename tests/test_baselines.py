"""Linear feature baseline against an independent numpy ridge solve, per task."""

import numpy as np
import torch

from metarl.rl.baselines import fit_linear_baseline, linear_features, ridge_solve
from metarl.rl.episodes import EpisodeBatch

GAMMA = 0.9


def make_batch(seed: int, num_tasks: int = 2, per_task: int = 3, horizon: int = 7) -> EpisodeBatch:
    gen = torch.Generator().manual_seed(seed)
    n = num_tasks * per_task
    lengths = torch.randint(2, horizon + 1, (n,), generator=gen)
    lengths[0] = horizon
    mask = (torch.arange(horizon).unsqueeze(1) < lengths).double()
    obs = torch.randn(horizon, n, 2, generator=gen, dtype=torch.float64) * 4.0  # some |o| > 10 clip
    obs[0, 1, 0] = 25.0
    # task-dependent rewards: task k's reward depends on the observation with a different sign
    sign = torch.tensor([1.0, -1.0]).repeat_interleave(per_task)[:n].double()
    rewards = (sign * obs[..., 0] + 0.1 * torch.randn(horizon, n, generator=gen)) * mask
    return EpisodeBatch(
        observations=obs * mask.unsqueeze(-1),
        actions=torch.zeros(horizon, n, 1, dtype=torch.float64),
        rewards=rewards,
        mask=mask,
        lengths=lengths,
        terminated=torch.zeros(n, dtype=torch.bool),
        truncated=torch.ones(n, dtype=torch.bool),
        last_observations=torch.randn(n, 2, generator=gen, dtype=torch.float64),
        log_probs=torch.zeros(horizon, n, dtype=torch.float64),
        num_tasks=num_tasks,
        episodes_per_task=per_task,
    )


def np_features(obs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """rllab's LinearFeatureBaseline._features, written independently in numpy."""
    o = np.clip(obs, -10, 10)
    al = t.reshape(-1, 1) / 100.0
    return np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(t), 1))], axis=1)


def np_fit_task(batch: EpisodeBatch, task: int) -> np.ndarray:
    """Ridge solve on one task's episodes, one path at a time as rllab does."""
    feats, rets = [], []
    e = batch.episodes_per_task
    for n in range(task * e, (task + 1) * e):
        length = int(batch.lengths[n])
        r = batch.rewards[:length, n].numpy()
        ret = np.zeros(length)
        acc = 0.0
        for t in reversed(range(length)):
            acc = r[t] + GAMMA * acc
            ret[t] = acc
        feats.append(np_features(batch.observations[:length, n].numpy(), np.arange(length)))
        rets.append(ret)
    f, y = np.concatenate(feats), np.concatenate(rets)
    return np.linalg.solve(f.T @ f + 1e-5 * np.eye(f.shape[1]), f.T @ y)


def test_linear_features_by_hand() -> None:
    obs = torch.tensor([[2.0, -12.0]], dtype=torch.float64)
    got = linear_features(obs, torch.tensor([50]))
    expected = torch.tensor([[2.0, -10.0, 4.0, 100.0, 0.5, 0.25, 0.125, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_fit_matches_numpy_ridge_per_task() -> None:
    batch = make_batch(0)
    fit = fit_linear_baseline(batch, GAMMA)
    e = batch.episodes_per_task
    for task in range(batch.num_tasks):
        w = np_fit_task(batch, task)
        np.testing.assert_allclose(fit.coeffs[task].numpy(), w, rtol=1e-7, atol=1e-9)
        for n in range(task * e, (task + 1) * e):
            length = int(batch.lengths[n])
            f = np_features(batch.observations[:length, n].numpy(), np.arange(length))
            np.testing.assert_allclose(fit.values[:length, n].numpy(), f @ w, rtol=1e-7, atol=1e-9)
            f_last = np_features(batch.last_observations[n : n + 1].numpy(), np.array([length]))
            np.testing.assert_allclose(fit.last_values[n].item(), (f_last @ w).item(), rtol=1e-7)


def test_fit_is_per_task() -> None:
    batch = make_batch(3)
    fit = fit_linear_baseline(batch, GAMMA)
    # the two tasks have opposite reward signs: their fits must differ clearly
    assert (fit.coeffs[0] - fit.coeffs[1]).abs().max() > 0.1
    # and fitting task 1 alone gives the same numbers as fitting it inside the batch
    alone = fit_linear_baseline(batch.task(1), GAMMA)
    torch.testing.assert_close(alone.coeffs[0], fit.coeffs[1])
    torch.testing.assert_close(alone.values, fit.values[:, 3:])


def test_fit_float32_returns_float32_and_no_grad() -> None:
    batch = make_batch(4)
    fields = {
        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in batch.__dict__.items()
    }
    fit = fit_linear_baseline(EpisodeBatch(**fields), GAMMA)
    assert fit.values.dtype == torch.float32 and not fit.values.requires_grad
    torch.testing.assert_close(
        fit.values.double(), fit_linear_baseline(batch, GAMMA).values, atol=1e-4, rtol=1e-4
    )


def test_ridge_solve_per_entry_and_non_finite_falls_back_to_zero() -> None:
    # entry 1 has a NaN feature: its solution is not finite at any reg and falls back to 0;
    # entry 0 is an ordinary problem, solved exactly.
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[np.nan, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([[3.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    w = ridge_solve(x, y, reg_coeff=0.0)
    torch.testing.assert_close(w[0], torch.tensor([3.0, 2.0], dtype=torch.float64))
    assert torch.equal(w[1], torch.zeros(2, dtype=torch.float64))
