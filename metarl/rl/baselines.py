"""Linear feature baseline (rllab's ``LinearFeatureBaseline``), fitted in closed form per task.

Features of a step at time ``t`` with observation ``o``:
``phi = [clip(o, -10, 10), clip(o, -10, 10)**2, t/100, (t/100)**2, (t/100)**3, 1]``.
Per task, the weights solve the ridge problem
``min_w sum_{real steps} (phi^T w - R_t)^2 + reg * |w|^2`` on the discounted Monte Carlo returns
``R_t``, i.e. ``(Phi^T Phi + reg I) w = Phi^T R``, in float64. As in rllab, ``reg`` starts at
``1e-5`` and is multiplied by 10 (up to 5 tries) while the solution is not finite.
No gradient flows through the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metarl.rl.episodes import EpisodeBatch, discounted_returns, merge_tasks, split_tasks

OBS_CLIP = 10.0
TIME_SCALE = 100.0


@dataclass(frozen=True)
class BaselineValues:
    """Predicted values of a fitted baseline.

    Attributes:
        values: ``[T, N]`` value ``V(s_t)`` of every step (also predicted on padded steps,
            where it is meaningless and ignored by :func:`metarl.rl.episodes.gae`).
        last_values: ``[N]`` value of each episode's last observation, at time ``length``.
        coeffs: ``[num_tasks, 2 * obs_dim + 4]`` fitted weights (float64).
    """

    values: Tensor
    last_values: Tensor
    coeffs: Tensor


def linear_features(observations: Tensor, time: Tensor) -> Tensor:
    """rllab features ``[o, o**2, t/100, (t/100)**2, (t/100)**3, 1]`` with ``o`` clipped to
    ``[-10, 10]``; ``observations [..., d]`` and ``time [...]`` give ``[..., 2 d + 4]``."""
    o = observations.clamp(-OBS_CLIP, OBS_CLIP)
    s = (time.to(o.dtype) / TIME_SCALE).unsqueeze(-1)
    return torch.cat([o, o * o, s, s * s, s * s * s, torch.ones_like(s)], dim=-1)


def ridge_solve(
    features: Tensor, targets: Tensor, *, reg_coeff: float = 1e-5, max_tries: int = 5
) -> Tensor:
    """Batched ridge regression ``(X^T X + reg I) w = X^T y`` per leading batch entry.

    ``features [B, M, F]`` (zero rows are ignored in effect), ``targets [B, M]`` -> ``[B, F]``.
    For each batch entry whose solution is not finite, ``reg`` grows x10, up to ``max_tries``.
    """
    xtx = features.transpose(1, 2) @ features
    xty = (features.transpose(1, 2) @ targets.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(features.shape[-1], dtype=features.dtype, device=features.device)
    reg = torch.full((features.shape[0], 1, 1), reg_coeff, dtype=features.dtype)
    reg = reg.to(features.device)
    coeffs = torch.zeros_like(xty)
    for _ in range(max_tries):
        solution, _ = torch.linalg.solve_ex(xtx + reg * eye, xty)
        good = torch.isfinite(solution).all(dim=-1)
        coeffs = torch.where(good.unsqueeze(-1), solution, coeffs)
        if bool(good.all()):
            break
        reg = torch.where(good.view(-1, 1, 1), reg, reg * 10.0)
    return coeffs


def fit_linear_baseline(
    episodes: EpisodeBatch, gamma: float, *, reg_coeff: float = 1e-5
) -> BaselineValues:
    """Fit the linear feature baseline per task on discounted Monte Carlo returns.

    Returns the predicted values of every step and of every episode's last observation
    (at time index ``length``, for bootstrapping truncated episodes), in the episodes' dtype.
    """
    with torch.no_grad():
        k = episodes.num_tasks
        obs = episodes.observations.to(torch.float64)
        mask = episodes.mask.to(torch.float64)
        returns = discounted_returns(episodes.rewards.to(torch.float64), mask, gamma)
        time = torch.arange(episodes.horizon, device=obs.device).unsqueeze(1).expand_as(mask)
        feats = split_tasks(linear_features(obs, time), k)  # [K, T, E, F]
        masked = (feats * split_tasks(mask, k).unsqueeze(-1)).flatten(1, 2)
        coeffs = ridge_solve(masked, split_tasks(returns, k).flatten(1, 2), reg_coeff=reg_coeff)
        values = merge_tasks(torch.einsum("ktef,kf->kte", feats, coeffs))
        last_obs = episodes.last_observations.to(torch.float64)
        last_feats = split_tasks(linear_features(last_obs, episodes.lengths), k, time_major=False)
        last_values = torch.einsum("kef,kf->ke", last_feats, coeffs).reshape(-1)
        dtype = episodes.rewards.dtype
        return BaselineValues(
            values=values.to(dtype), last_values=last_values.to(dtype), coeffs=coeffs
        )
