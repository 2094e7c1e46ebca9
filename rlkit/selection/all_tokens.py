"""Select everything: every generated token is trained on with weight 1.

    token_weights[i, t] = response_mask[i, t]

The default of GRPO (arXiv 2402.03300) and PPO (arXiv 1707.06347); down-sampling selections (e.g. D3S)
replace it. No deviations.
"""

from __future__ import annotations

import torch

from rlkit.batch import RolloutBatch
from rlkit.plugin_api import Selection
from rlkit.registry import SELECTIONS


@SELECTIONS.register("all")
class AllTokens(Selection):
    """token_weights = response_mask as float; metrics token_frac = sample_frac = 1."""

    def __call__(self, batch: RolloutBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        token_weights = batch.response_mask.float()  # [N,T]
        return token_weights, {"token_frac": 1.0, "sample_frac": 1.0}
