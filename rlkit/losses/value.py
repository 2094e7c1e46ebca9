"""Clipped value loss for the critic of PPO with GAE (ALGORITHMS.md §10; verl ``compute_value_loss``).

    loss_t = coef * 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old_t - c, V_old_t + c) - R_t)^2)

V = current critic values (with grad), V_old = values of the scoring pass, R = GAE returns (``advantage: gae``
sets ``batch.returns``), c = ``clip`` (null = unclipped; 0 is refused: verl's ``cliprange_value=0`` pins V to
V_old while other code bases read 0 as "off", so a ported config must say which it means). Aggregated like every other loss term, with the
run's aggregation plan (verl reuses ``loss_agg_mode`` too). ``coef`` weighs it against the policy loss; with a
separate critic (own parameters and optimizer) it only scales the critic's gradient, with a shared backbone it
sets the trade-off in the backbone. Metrics: ``value_loss`` (unscaled) and ``value_clipfrac`` = the share of
tokens where the clipped term wins the max, ``(clip(V) - R)^2 > (V - R)^2`` (verl ``vf_clipfrac``, TRL; the same
convention as the policy loss's ``clip_frac``).
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit import ops
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("value")
class ValueLoss(Loss):
    """coef * clipped squared error between the critic's values and the GAE returns."""

    requires = frozenset({"values"})
    consumes = frozenset({"returns"})   # written by the advantage estimator (gae); checked by build_plugins

    def __init__(self, coef: float = 1.0, clip: float | None = 0.5):
        if not coef > 0:
            raise ValueError(f"value loss coef={coef} must be > 0")
        F.check_value_clip(clip)
        self.coef, self.clip = coef, clip

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = micro.batch
        if micro.values is None or b.values is None:
            raise ValueError("loss 'value' needs a critic: add a `critic:` section to the recipe")
        if b.returns is None:
            raise ValueError("loss 'value' needs value targets: use `advantage: gae` (it sets the returns)")
        mask = b.response_mask                                                             # [n, T]
        per_token = F.clipped_value_loss(micro.values, b.values, b.returns, clip=self.clip)  # [n, T]
        metrics = {"value_loss": ops.masked_mean(per_token.detach(), mask)}
        if self.clip is not None:
            active = F.value_clip_active(micro.values.detach(), b.values, b.returns, self.clip)  # [n, T]
            metrics["value_clipfrac"] = ops.masked_mean(active.float(), mask)
        return torch.where(mask, self.coef * per_token, 0.0), metrics                      # [n, T]
