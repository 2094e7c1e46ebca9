"""Pass-through advantage: the per-sequence values coming out of the objective are the advantages.

    A[i, t] = r'_i * response_mask[i, t]          r'_i = objective output (reward or advantage)

Used with objectives that apply their own baseline (``objective: max_at_k`` with ``baseline`` other than
``none``), and for REINFORCE without a baseline (``objective: mean``). No normalisation, no state.
"""

from __future__ import annotations

import torch

from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("passthrough")
class PassthroughAdvantage(AdvantageEstimator):
    """A_i = the objective's per-sequence value, broadcast over the response tokens."""

    takes_advantages = True

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        adv = torch.nan_to_num(batch.rewards.float())                                      # [N]
        return adv[:, None] * batch.response_mask.float(), {                                # [N, T]
            "mean": adv.mean().item() if adv.numel() else 0.0,
            "abs_mean": adv.abs().mean().item() if adv.numel() else 0.0}
