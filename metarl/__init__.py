"""metarl: gradient-based meta-learning (MAML) for reinforcement learning and supervised tasks."""

from metarl.adaptation import adapt

__all__ = ["adapt"]
__version__ = "0.1.0"
