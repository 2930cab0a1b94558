"""A learner whose sampling is watched: the tests that check one training step against the batch
it sampled. Imported as ``recording`` by the tests (``tests/`` is on their path)."""

from __future__ import annotations

from typing import Any

from metarl.rl.episodes import EpisodeBatch
from metarl.rl.learners import PolicyLearner
from metarl.rngs import Rngs


def record_samples(learner: PolicyLearner) -> dict[str, Any]:
    """Make ``learner.sample_with_theta`` keep its last tasks and batch (``"tasks"``,
    ``"batch"``) in the dict returned."""
    seen: dict[str, Any] = {}
    sample = learner.sample_with_theta

    def recording(r: Rngs) -> tuple[list[Any], EpisodeBatch]:
        seen["tasks"], seen["batch"] = sample(r)
        return seen["tasks"], seen["batch"]

    learner.sample_with_theta = recording  # type: ignore[method-assign]
    return seen
