"""ΔL normalization (He et al., arXiv 2509.07558): per-sequence weights ∝ L_i^-α, the minimum-variance unbiased
aggregation at α = 1, Dr. GRPO at α = 0.

    loss = (1/M) Σ_i w_i Σ_t token_weights·ℓ,     w_i = L_i^-α / Σ_j L_j^-α,     M = max_len (constant)

``normalize: batch`` (default) takes Σ_j over the optimizer step's global batch, as the authors' released code
does; ``normalize: group`` takes it within each prompt's group and averages over groups, as the paper's
per-question derivation does. ``alpha`` defaults to 0.75 (the code's default; the README uses 1.0 for
CountDown). L_i = trained tokens of row i, so tokens dropped by a selection plug-in leave it; rows with no trained
token get weight 0 and leave the normalisation. The plan is computed on the gathered global lengths, so the loss
does not depend on micro-batch count or world size. Maths: ``rlkit.functional.delta_l.plan_delta_l``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.functional.delta_l import DELTA_L_NORMALIZE
from rlkit.plugin_api import Aggregation, AggregationPlan
from rlkit.registry import AGGREGATIONS


@AGGREGATIONS.register("delta_l")
class DeltaL(Aggregation):
    """coef_i = L_i^-alpha / sum_j L_j^-alpha (batch or group), Z = max_len (x groups)."""

    def __init__(self, alpha: float = 0.75, normalize: str = "batch"):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        F.check_choice("normalize", normalize, list(DELTA_L_NORMALIZE))
        self.alpha, self.normalize = alpha, normalize

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        coef, z = F.aggregation_plan(lengths, "delta_l", max_len=max_len, alpha=self.alpha,
                                     normalize=self.normalize, group_ids=group_ids)       # [N], float
        return AggregationPlan(coef=coef, normalizer=z)
