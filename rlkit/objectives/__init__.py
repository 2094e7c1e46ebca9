"""Objectives: per-group reward transforms applied once per step, before the advantage estimator.

Importing this package registers the built-in objectives in ``rlkit.registry.OBJECTIVES``.
"""

from rlkit.objectives import mean  # noqa: F401  (registers "mean")
from rlkit.objectives.mean import MeanObjective
from rlkit.plugin_api import Objective

__all__ = ["MeanObjective", "Objective"]
