"""Test-wide settings: one torch thread (two cores here; more threads spin against each other)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
