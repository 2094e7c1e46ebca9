"""Per-token losses: MicroBatch -> loss [n, T] (never reduced; 0 where masked) and token-mean metrics.

Importing this package registers the built-in losses in ``rlkit.registry.LOSSES``.
"""

from rlkit.losses import kl, ppo_clip, value  # noqa: F401  (register "kl", "ppo_clip", "value")
from rlkit.losses.kl import KLLoss
from rlkit.losses.ppo_clip import PPOClipLoss
from rlkit.losses.value import ValueLoss
from rlkit.plugin_api import Loss, MicroBatch

__all__ = ["KLLoss", "Loss", "MicroBatch", "PPOClipLoss", "ValueLoss"]
