"""The random streams of a run, owned by the trainer and passed explicitly (never global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Rngs:
    """A torch and a numpy generator derived from one seed, with checkpointable state."""

    torch: torch.Generator
    numpy: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> Rngs:
        gen = torch.Generator().manual_seed(seed)
        return cls(torch=gen, numpy=np.random.default_rng(seed))

    def state(self) -> dict[str, Any]:
        return {"torch": self.torch.get_state(), "numpy": self.numpy.bit_generator.state}

    def restore(self, state: dict[str, Any]) -> None:
        self.torch.set_state(state["torch"])
        self.numpy.bit_generator.state = state["numpy"]


def held_out_generator(*keys: int) -> torch.Generator:
    """A torch generator for a held-out (evaluation) stream named by ``keys``.

    Seeded through ``SeedSequence(keys)``, so it never equals a training stream, which is
    seeded with a plain integer (:meth:`Rngs.from_seed`).
    """
    state = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
