"""Sequence mean of per-sequence token means (original GRPO, arXiv 2402.03300; TRL "grpo").

    loss = (1/N_seq) Σ_i (1/L_i) Σ_t w[i,t]·ℓ[i,t]   coef_i = 1/L_i,  Z = N_seq = #{i : L_i > 0}

Empty rows (L_i = 0) get coef 0 and are left out of N_seq, as in verl's "seq-mean-token-mean" with the
global batch size (TRL counts them in the mean instead). Z = 1 if every row is empty.
The maths is ``rlkit.functional.aggregation_plan(lengths, "seq_mean_token_mean")``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import Aggregation, AggregationPlan
from rlkit.registry import AGGREGATIONS


@AGGREGATIONS.register("seq_mean_token_mean")
class SeqMeanTokenMean(Aggregation):
    """coef_i = 1/L_i, Z = number of non-empty sequences of the global batch."""

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        coef, normalizer = F.aggregation_plan(lengths, "seq_mean_token_mean", max_len=max_len)  # [N], float
        return AggregationPlan(coef=coef, normalizer=normalizer)
