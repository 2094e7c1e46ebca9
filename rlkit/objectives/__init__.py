"""Objectives: per-group reward transforms applied once per step, before the advantage estimator.

Importing this package registers the built-in objectives in ``rlkit.registry.OBJECTIVES``.
"""

from rlkit.objectives import max_at_k, mean  # noqa: F401  (register "max_at_k", "mean")
from rlkit.objectives.max_at_k import MaxAtKObjective
from rlkit.objectives.mean import MeanObjective
from rlkit.plugin_api import Objective

__all__ = ["MaxAtKObjective", "MeanObjective", "Objective"]
