"""GRPO group-relative outcome advantage (Shao et al., DeepSeekMath, arXiv 2402.03300).

For the valid rewards r of group g (all completions of one prompt):

    scale="group":  A_i = (r_i - mean_g) / (std_g + eps)        std_g: Bessel (ddof=1) std of the group
    scale="batch":  A_i = (r_i - mean_g) / (std_batch + eps)    std_batch: Bessel std of all valid rewards
    scale="none":   A_i =  r_i - mean_g                          (Dr. GRPO advantage, arXiv 2503.20783)

The token advantage is ``A_i * response_mask[i, t]``. The maths is ``rlkit.functional.grpo_advantages``.

Library mapping: TRL ``scale_rewards`` ("group" | "batch" | "none"; True -> "group", False -> "none") and
verl ``norm_adv_by_std_in_grpo`` (True -> "group", False -> "none"). The eps defaults differ: verl 1e-6
(rlkit's default), TRL 1e-4 -- set ``eps: 1.0e-4`` for TRL parity.

Deviations / choices:
* Single-member group: ``singleton="zero"`` (default, TRL) gives A = 0; ``singleton="raw"`` follows verl
  (mean 0, std 1 -> A = r / (1 + eps), or r with scale "none").
* NaN reward (every reward function failed): left out of the statistics, A = 0 (TRL's nan-aware ops).
* A group whose valid rewards are all equal gets exactly A = 0, also when rounding in the mean would leave a
  tiny residue (e.g. rewards 0.1, 0.1, 0.1 in fp32).
* Pool statistics (``uses_pool_stats``): when the sampler measured a baseline over *every* row it generated for a
  prompt (``RolloutBatch.pool_mean`` / ``pool_std``, Reinforce-Ada ``global_stats: true``, ALGORITHMS.md §7), they
  replace the kept group's mean and std: A_i = r_i - pool_mean_i, divided by (pool_std_i + eps) for scale "group"
  or by (std_batch + eps) for "batch". The kept group was chosen by the sampler (e.g. balanced), so its own
  statistics would be biased. No all-equal guard applies then: a kept group of equal rewards drawn from a mixed
  pool has a non-zero advantage, as in the reference.
* Rewards are normalised over this process's batch; groups never span processes, so "group" is exact, while
  "batch" uses this process's rewards only (TRL gathers all processes first).
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("grpo")
class GRPOAdvantage(AdvantageEstimator):
    """Group-relative advantage (r - group mean) / (std + eps), broadcast over the response tokens."""

    uses_pool_stats = True

    def __init__(self, scale: str = "group", eps: float = 1e-6, singleton: str = "zero"):
        F.check_grpo_args(scale, eps, singleton)
        self.scale, self.eps, self.singleton = scale, eps, singleton

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.pool_mean is not None:
            adv = F.pool_baseline_advantages(batch.rewards, batch.pool_mean, batch.pool_std, scale=self.scale,
                                             eps=self.eps)  # [N]
        else:
            adv = F.grpo_advantages(batch.rewards, batch.group_ids, scale=self.scale, eps=self.eps,
                                    singleton=self.singleton)  # [N]
        advantages = adv[:, None] * batch.response_mask.to(adv.dtype)  # [N,T]
        return advantages, self._metrics(adv, batch.rewards, batch.group_ids)

    @staticmethod
    def _metrics(adv: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
        """Sequence-level statistics of A [N] and the fraction of groups with all-equal rewards."""
        low, high = ops.group_min_max(rewards.float(), group_ids)  # [N], [N]
        flat = ~(low < high)  # [N] bool, all valid rewards equal (or none valid)
        per_group, counts, _ = ops.group_sum(flat.float(), group_ids)  # [G], [G]
        return {
            "mean": adv.mean().item() if adv.numel() else 0.0,
            "std": adv.std().item() if adv.numel() > 1 else 0.0,
            "abs_mean": adv.abs().mean().item() if adv.numel() else 0.0,
            "zero_std_frac": (per_group / counts).mean().item() if counts.numel() else 0.0,
        }
