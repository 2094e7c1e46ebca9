"""RLOO advantage: leave-one-out baseline (Ahmadian et al., arXiv 2402.14740; Kool et al., 2019).

    A_i = r_i - mean_{j != i, j in group} r_j = n / (n - 1) * (r_i - mean_g)

Unbiased (the baseline of a sample never uses that sample). Groups with fewer than 2 valid rewards, and NaN
(unscorable) rewards, get A = 0. No scaling by the std (TRL's RLOO trainer has an option for that; use
``advantage: grpo`` for std scaling). Maths: ``rlkit.functional.rloo_advantages``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("rloo")
class RLOOAdvantage(AdvantageEstimator):
    """r_i minus the mean of the other rewards of its group."""

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        adv = F.rloo_advantages(batch.rewards, batch.group_ids)                            # [N]
        return adv[:, None] * batch.response_mask.to(adv.dtype), _stats(adv)              # [N, T]


def _stats(adv: torch.Tensor) -> dict[str, float]:
    return {"mean": adv.mean().item() if adv.numel() else 0.0,
            "std": adv.std().item() if adv.numel() > 1 else 0.0,
            "abs_mean": adv.abs().mean().item() if adv.numel() else 0.0}
