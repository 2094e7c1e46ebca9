"""Per-token losses: MicroBatch -> loss [n, T] (never reduced; 0 where masked) and token-mean metrics.

Importing this package registers the built-in losses in ``rlkit.registry.LOSSES``.
"""

from rlkit.losses import cispo, clip_cov, entropy, gspo, kl, kl_cov, ppo_clip, value  # noqa: F401  (register the built-in losses)
from rlkit.losses.cispo import CISPOLoss
from rlkit.losses.clip_cov import ClipCovLoss
from rlkit.losses.entropy import EntropyBonus
from rlkit.losses.gspo import GSPOLoss
from rlkit.losses.kl import KLLoss
from rlkit.losses.kl_cov import KLCovLoss
from rlkit.losses.ppo_clip import PPOClipLoss
from rlkit.losses.value import ValueLoss
from rlkit.plugin_api import Loss, MicroBatch

__all__ = ["CISPOLoss", "ClipCovLoss", "EntropyBonus", "GSPOLoss", "KLCovLoss", "KLLoss", "Loss", "MicroBatch", "PPOClipLoss", "ValueLoss"]
