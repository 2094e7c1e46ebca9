"""Dr. GRPO constant-length normalisation (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    loss = Σ_i Σ_t w[i,t]·ℓ[i,t] / (N · M)          coef_i = 1,  Z = N · M

N = every sequence of the global batch (empty ones included), M = ``max_len``, the run's maximum response
length (a constant, not the longest response of the batch). These are the paper's and TRL's ``dr_grpo``
semantics over the whole step.

Deviation: verl's mode of the same name ("seq-mean-token-sum-norm") divides each micro-batch by M only
(no 1/N), so its scale depends on the micro-batch count; rlkit's does not. Pair it with the GRPO advantage
``scale: none`` for full Dr. GRPO. The maths is ``rlkit.functional.aggregation_plan``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import Aggregation, AggregationPlan
from rlkit.registry import AGGREGATIONS


@AGGREGATIONS.register("seq_mean_token_sum_norm")
class SeqMeanTokenSumNorm(Aggregation):
    """coef = 1, Z = (number of sequences) x max_len."""

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        coef, normalizer = F.aggregation_plan(lengths, "seq_mean_token_sum_norm", max_len=max_len)  # [N], float
        return AggregationPlan(coef=coef, normalizer=normalizer)
