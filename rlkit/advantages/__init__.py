"""Advantage estimators: RolloutBatch -> advantages [N, T] (0 where ``response_mask`` is False).

Importing this package registers the built-in estimators in ``rlkit.registry.ADVANTAGES``.
"""

from rlkit.advantages import beta_norm, gae, grpo, passthrough, reinforce_pp, rloo  # noqa: F401  (register them)
from rlkit.advantages.beta_norm import BetaNormAdvantage
from rlkit.advantages.gae import GAEAdvantage
from rlkit.advantages.grpo import GRPOAdvantage
from rlkit.advantages.passthrough import PassthroughAdvantage
from rlkit.advantages.reinforce_pp import ReinforcePPAdvantage
from rlkit.advantages.rloo import RLOOAdvantage
from rlkit.plugin_api import AdvantageEstimator

__all__ = ["AdvantageEstimator", "BetaNormAdvantage", "GAEAdvantage", "GRPOAdvantage", "PassthroughAdvantage",
           "RLOOAdvantage", "ReinforcePPAdvantage"]
