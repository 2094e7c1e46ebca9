"""Entropy bonus: ``loss_t = -coef * H_t``, ``H_t = -sum_v pi(v | y_<t) log pi(v | y_<t)``, per token, never reduced.

Added to a policy loss (``losses: [ppo_clip, {name: entropy, coef: 0.001}]``) it rewards keeping the policy's
token distribution spread, against the entropy collapse of RL on verifiable rewards (Cui et al., arXiv 2505.22617,
discuss why a fixed bonus is a blunt tool; verl's ``entropy_coeff``, OpenRLHF's ``entropy_loss_coef``).

The entropy is the training forward's own, with gradient ``dH/dz = -p (log p + H)`` through the chunked LM head
(``rlkit.fused_logprob``: the [tokens, V] logits still never exist; one more [chunk, V] buffer in backward).
Deviations: none; aggregated like every other term (verl applies its own ``loss_agg_mode`` to the entropy too).
Metric: ``entropy_bonus`` = the mean entropy the bonus acted on.
"""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("entropy")
class EntropyBonus(Loss):
    """-coef x the policy's per-token entropy, with gradient."""

    needs_entropy_grad = True

    def __init__(self, coef: float = 1e-3):
        if not coef > 0:
            raise ValueError(f"entropy.coef must be > 0 (typical: 1e-4 to 1e-2), got {coef}")
        self.coef = coef

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if micro.entropy is None or not micro.entropy.requires_grad and micro.logprobs.requires_grad:
            raise ValueError("loss 'entropy' needs the training forward's entropy with gradient "
                             "(MicroBatch.entropy); it was computed without")
        mask = micro.batch.response_mask                                                    # [n, T]
        loss = torch.where(mask, -self.coef * micro.entropy, 0.0)                           # [n, T]
        return loss, {"entropy_bonus": ops.masked_mean(micro.entropy.detach(), mask)}
