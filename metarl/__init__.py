"""metarl: gradient-based meta-learning (MAML) for reinforcement learning and supervised tasks."""

from metarl.adaptation import adapt

__all__ = ["adapt"]
__version__ = "0.1.0"

# Register the task environments (metarl/...) with Gymnasium. A plain module import, last:
# envs itself imports metarl.tasks.
import envs  # noqa: F401
