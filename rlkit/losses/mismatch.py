"""Train-inference mismatch correction shared by the policy losses (``rlkit.functional.mismatch_weights``).

The rollout engine (vLLM) samples from a numerically slightly different policy than the trainer's pi_old.
``tis_cap`` multiplies each token's loss by the truncated importance weight ``min(pi_old/pi_rollout, tis_cap)``
(TIS); ``mis_low`` / ``mis_high`` drop whole sequences whose geometric-mean ratio falls outside the band (MIS).
Both need ``old_logprobs``, which a loss using them then requires from the scoring pass. Off by default.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import MicroBatch


class MismatchCorrection:
    """Validated TIS / MIS settings of one loss plug-in; ``apply`` weights its per-token loss."""

    def __init__(self, where: str, tis_cap: float | None, mis_low: float | None, mis_high: float | None):
        if tis_cap is not None and tis_cap <= 0:
            raise ValueError(f"{where}.tis_cap must be > 0 (typical: 2.0), got {tis_cap}")
        if mis_low is not None and mis_high is not None and not 0 <= mis_low < mis_high:
            raise ValueError(f"{where} needs 0 <= mis_low < mis_high, got {mis_low}, {mis_high}")
        self.tis_cap, self.mis_low, self.mis_high = tis_cap, mis_low, mis_high
        self.enabled = tis_cap is not None or mis_low is not None or mis_high is not None

    def apply(self, loss: torch.Tensor, old: torch.Tensor, micro: MicroBatch,
              metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """``loss`` [n, T] times the mismatch weights [n, T] (unchanged when off); metrics gain the weights' stats."""
        if not self.enabled:
            return loss
        batch = micro.batch
        weights, extra = F.mismatch_weights(old, batch.rollout_logprobs.to(old.device), batch.response_mask,
                                            tis_cap=self.tis_cap, mis_low=self.mis_low, mis_high=self.mis_high)
        metrics.update(extra)
        return loss * weights                                                                   # [n, T]


def old_logprobs(micro: MicroBatch, where: str) -> torch.Tensor:
    """The behaviour policy's log-probs [n, T]; without a scoring pass (one on-policy update) the current log-probs,
    detached, stand in for them (ratio = 1), as TRL does with ``num_iterations=1``."""
    if micro.batch.advantages is None:
        raise ValueError(f"{where}: the micro-batch has no advantages; the advantage estimator must run first")
    old = micro.batch.old_logprobs
    return old if old is not None else micro.logprobs.detach()                                # [n, T]
