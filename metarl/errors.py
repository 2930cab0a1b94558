"""Exceptions shared across modules."""

from __future__ import annotations


class StepError(RuntimeError):
    """A learner step failed for a reason outside the maths (e.g. sampler workers that kept
    dying): the trainer stops with a clear message and keeps the last good checkpoint."""


class SamplerError(StepError):
    """Sampling failed: a worker died or hung more often than the retries allow, or the
    backend cannot start."""
