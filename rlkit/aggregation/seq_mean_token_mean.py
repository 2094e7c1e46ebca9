"""Sequence mean of per-sequence token means (original GRPO, arXiv 2402.03300; TRL "grpo").

    loss = (1/N_seq) Σ_i (1/L_i) Σ_t w[i,t]·ℓ[i,t]   coef_i = 1/L_i,  Z = N_seq = #{i : L_i > 0}

Empty rows (L_i = 0: no trained token) get coef 0 and are left out of N_seq. verl's "seq-mean-token-mean" leaves
them out only on its local path (no ``global_batch_info``: it divides by the micro-batch's count of non-empty rows);
its trainer normally passes a global batch size that counts every row of the mini-batch, empty ones included, and
TRL's "grpo" also counts them in the mean. So rlkit equals both exactly when no row of the mini-batch is empty, and
gives the empty-row-free mean (a larger per-row weight) otherwise. Z = 1 if every row is empty.
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
