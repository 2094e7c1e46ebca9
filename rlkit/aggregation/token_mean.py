"""Token mean over the whole step (DAPO token-level loss, arXiv 2503.14476; TRL "dapo", verl "token-mean").

    loss = Σ_i Σ_t w[i,t]·ℓ[i,t] / Σ_i L_i          coef_i = 1,  Z = Σ_i L_i (global trained tokens)

Z counts the tokens of the whole optimizer step over every process and micro-batch, so every token weighs
the same whatever the split. An all-masked batch uses Z = 1 and gives 0 (verl would divide by 0).
The maths is ``rlkit.functional.aggregation_plan(lengths, "token_mean")``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import Aggregation, AggregationPlan
from rlkit.registry import AGGREGATIONS


@AGGREGATIONS.register("token_mean")
class TokenMean(Aggregation):
    """coef = 1, Z = total trained tokens of the global batch."""

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        coef, normalizer = F.aggregation_plan(lengths, "token_mean", max_len=max_len)  # [N], float
        return AggregationPlan(coef=coef, normalizer=normalizer)
