"""Sequence mean of per-sequence token sums (verl "seq-mean-token-sum"; used by the BNPO runs, arXiv 2506.02864).

    loss = (1/N_seq) Σ_i Σ_t w[i,t]·ℓ[i,t]          coef_i = 1,  Z = N_seq = #{i : L_i > 0}

Empty rows are left out of N_seq (verl); Z = 1 if every row is empty.
The maths is ``rlkit.functional.aggregation_plan(lengths, "seq_mean_token_sum")``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import Aggregation, AggregationPlan
from rlkit.registry import AGGREGATIONS


@AGGREGATIONS.register("seq_mean_token_sum")
class SeqMeanTokenSum(Aggregation):
    """coef = 1, Z = number of non-empty sequences of the global batch."""

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        coef, normalizer = F.aggregation_plan(lengths, "seq_mean_token_sum", max_len=max_len)  # [N], float
        return AggregationPlan(coef=coef, normalizer=normalizer)
