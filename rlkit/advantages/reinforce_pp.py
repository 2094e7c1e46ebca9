"""REINFORCE++ (baseline variant) advantage (Hu et al., arXiv 2501.03262, "REINFORCE++-baseline").

    x_i = r_i - mean_g(r)                        group-mean baseline
    A_i = (x_i - m) / sqrt(v + eps)              whitening over the whole batch

m, v: mean and Bessel variance of x over the batch's valid completions, each weighted by its number of response
tokens (``token_weighted: true``, default: the same as whitening the broadcast token advantages over all valid
tokens, as verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage``) or by 1 (``token_weighted: false``).
Singleton groups and NaN rewards get A = 0 and are left out of (m, v) (rlkit; verl keeps a singleton's raw
reward). Fewer than 2 weights: no whitening. The "batch" is this process's batch (groups never span processes).
Maths: ``rlkit.functional.reinforce_pp_advantages``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.advantages.rloo import _stats
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("reinforce_pp")
class ReinforcePPAdvantage(AdvantageEstimator):
    """Group-mean baseline, then batch whitening."""

    def __init__(self, token_weighted: bool = True, eps: float = 1e-8):
        if not eps > 0:
            raise ValueError(f"eps={eps} must be > 0")
        self.token_weighted, self.eps = token_weighted, eps

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.response_mask if self.token_weighted else None
        adv = F.reinforce_pp_advantages(batch.rewards, batch.group_ids, mask, eps=self.eps)  # [N]
        return adv[:, None] * batch.response_mask.to(adv.dtype), _stats(adv)              # [N, T]
