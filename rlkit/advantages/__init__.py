"""Advantage estimators: RolloutBatch -> advantages [N, T] (0 where ``response_mask`` is False).

Importing this package registers the built-in estimators in ``rlkit.registry.ADVANTAGES``.
"""

from rlkit.advantages import grpo  # noqa: F401  (registers "grpo")
from rlkit.advantages.grpo import GRPOAdvantage
from rlkit.plugin_api import AdvantageEstimator

__all__ = ["AdvantageEstimator", "GRPOAdvantage"]
