"""Mean objective: maximise the expected reward, i.e. the identity reward transform.

    r'_i = r_i

This is the objective of GRPO (arXiv 2402.03300) and PPO (arXiv 1707.06347); other objectives (e.g. max@k)
replace the rewards by a per-group transform before the advantage estimator. No deviations.
"""

from __future__ import annotations

import torch

from rlkit.plugin_api import Objective
from rlkit.registry import OBJECTIVES


@OBJECTIVES.register("mean")
class MeanObjective(Objective):
    """Identity: returns the rewards unchanged."""

    identity = True

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:  # [N], [N] -> [N]
        return rewards  # [N]
