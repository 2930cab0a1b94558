"""EpisodeBatch layout and validation; discounted returns and GAE against hand-computed arrays."""

import math

import pytest
import torch

from metarl.rl.episodes import EpisodeBatch, discounted_returns, gae, merge_tasks, split_tasks

NAN = math.nan
D = torch.float64

# Three episodes, T = 3, time-major [T, N]: lengths 3, 2, 1; padded entries are NaN so that any
# leak of padding into real steps shows up.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=D)
REWARDS = torch.tensor([[1.0, 1.0, 4.0], [2.0, 1.0, NAN], [3.0, NAN, NAN]], dtype=D)


def test_discounted_returns_by_hand() -> None:
    # gamma = 0.5. ep0: [1 + .5*2 + .25*3, 2 + .5*3, 3]; ep1: [1 + .5, 1]; ep2: [4].
    expected = torch.tensor([[2.75, 1.5, 4.0], [3.5, 1.0, 0.0], [3.0, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(discounted_returns(REWARDS, MASK, 0.5), expected)


def test_discounted_returns_bootstrap_by_hand() -> None:
    # bootstrap b = [10, 20, 30] after the last real step.
    # ep0: R2 = 3 + 5 = 8, R1 = 2 + 4 = 6, R0 = 1 + 3 = 4; ep1: R1 = 1 + 10 = 11, R0 = 6.5;
    # ep2: R0 = 4 + 15 = 19.
    boot = torch.tensor([10.0, 20.0, 30.0], dtype=D)
    expected = torch.tensor([[4.0, 6.5, 19.0], [6.0, 11.0, 0.0], [8.0, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(discounted_returns(REWARDS, MASK, 0.5, bootstrap=boot), expected)


def test_gae_by_hand_truncated_terminated_padded() -> None:
    # gamma = 0.5, lam = 0.5 (gamma * lam = 0.25).
    # ep0 truncated, V = [1, 1, 2], V(s_3) = 4: deltas [0.5, 2, 3] -> A = [1.1875, 2.75, 3].
    # ep1 terminated, V = [2, 1], V(s_2) = 100 ignored: deltas [-0.5, 0] -> A = [-0.5, 0].
    # ep2 truncated, V = [1], V(s_1) = 2: delta 4 + 1 - 1 = 4 -> A = [4].
    values = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, NAN], [2.0, NAN, NAN]], dtype=D)
    last_values = torch.tensor([4.0, 100.0, 2.0], dtype=D)
    terminated = torch.tensor([False, True, False])
    adv = gae(
        REWARDS, values, MASK, gamma=0.5, lam=0.5, last_values=last_values, terminated=terminated
    )
    expected = torch.tensor([[1.1875, -0.5, 4.0], [2.75, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(adv, expected)


def test_gae_lambda_one_is_bootstrapped_return_minus_value() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards, values = (
        torch.randn(6, 4, generator=gen, dtype=D),
        torch.randn(6, 4, generator=gen, dtype=D),
    )
    lengths = torch.tensor([6, 3, 1, 5])
    mask = (torch.arange(6).unsqueeze(1) < lengths).to(D)
    last_values = torch.randn(4, generator=gen, dtype=D)
    terminated = torch.tensor([False, True, False, True])
    adv = gae(
        rewards, values, mask, gamma=0.9, lam=1.0, last_values=last_values, terminated=terminated
    )
    boot = torch.where(terminated, 0.0, last_values)
    expected = (discounted_returns(rewards, mask, 0.9, bootstrap=boot) - values) * mask
    torch.testing.assert_close(adv, expected)


def make_batch(num_tasks: int = 2, per_task: int = 3, horizon: int = 4) -> EpisodeBatch:
    gen = torch.Generator().manual_seed(1)
    n = num_tasks * per_task
    lengths = torch.randint(1, horizon + 1, (n,), generator=gen)
    lengths[0] = horizon
    mask = (torch.arange(horizon).unsqueeze(1) < lengths).float()
    return EpisodeBatch(
        observations=torch.randn(horizon, n, 3, generator=gen),
        actions=torch.randn(horizon, n, 2, generator=gen),
        rewards=torch.randn(horizon, n, generator=gen) * mask,
        mask=mask,
        lengths=lengths,
        terminated=lengths < horizon,
        truncated=lengths == horizon,
        last_observations=torch.randn(n, 3, generator=gen),
        log_probs=torch.randn(horizon, n, generator=gen),
        num_tasks=num_tasks,
        episodes_per_task=per_task,
    )


def test_by_task_and_task_slices() -> None:
    b = make_batch()
    bt = b.by_task()
    assert bt.observations.shape == (2, 4, 3, 3)
    assert bt.actions.shape == (2, 4, 3, 2)
    assert bt.mask.shape == (2, 4, 3)
    assert bt.lengths.shape == (2, 3)
    assert bt.last_observations.shape == (2, 3, 3)
    # episode n belongs to task n // episodes_per_task
    torch.testing.assert_close(bt.observations[1, :, 2], b.observations[:, 5])
    torch.testing.assert_close(bt.last_observations[1, 0], b.last_observations[3])
    t1 = b.task(1)
    assert t1.num_tasks == 1 and t1.episodes_per_task == 3
    torch.testing.assert_close(t1.rewards, b.rewards[:, 3:6])
    torch.testing.assert_close(merge_tasks(split_tasks(b.rewards, 2)), b.rewards)
    torch.testing.assert_close(b.returns, (b.rewards * b.mask).sum(0))
    with pytest.raises(IndexError):
        b.task(2)


def test_discrete_actions_accepted() -> None:
    b = make_batch()
    acts = torch.zeros(4, 6, dtype=torch.long)
    fields = {**b.__dict__, "actions": acts}
    assert EpisodeBatch(**fields).by_task().actions.shape == (2, 4, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_tasks": 4}, "num_tasks \\* episodes_per_task"),
        ({"rewards": torch.zeros(4, 5)}, "rewards must have shape"),
        ({"lengths": torch.zeros(6)}, "lengths must be a long"),
        ({"terminated": torch.zeros(6, dtype=torch.long)}, "terminated must be a bool"),
        ({"mask": torch.ones(4, 6)}, "mask must be 1.0 exactly"),
        ({"last_observations": torch.zeros(6, 2)}, "last_observations must have shape"),
        ({"actions": torch.zeros(4, 6)}, "actions \\(discrete\\) must be a long"),
    ],
)
def test_validation_errors(change: dict[str, object], message: str) -> None:
    fields = {**make_batch().__dict__, **change}
    with pytest.raises((ValueError, TypeError), match=message):
        EpisodeBatch(**fields)
