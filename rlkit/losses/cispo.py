"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585), per token, never reduced.

    r_t    = exp(logprobs_t - old_logprobs_t)
    loss_t = - sg[clip(r_t, 1 - eps_low, 1 + eps_high)] * A * logprobs_t

Unlike PPO's clip, which zeroes the gradient of tokens whose ratio left the trust region, every token keeps its
gradient ``-w_t A grad logprobs_t``: only its importance weight is capped. The maths is
``rlkit.functional.policy_losses.cispo_loss``.

Defaults and deviations:
* ``eps_low: null`` = no lower bound (the paper: "we did not impose a lower bound on the IS weight"), and
  ``eps_high: 4.0`` = a cap of 5 on the weight. The paper tunes only the upper bound and does not publish it; 5 is
  ScaleRL's eps_max (arXiv 2510.13786), which TRL recommends for ``loss_type="cispo"`` (``epsilon_high=5.0`` there
  is the cap itself, here the distance above 1, as for ``ppo_clip``).
* The paper aggregates over all tokens of the batch: ``aggregation: token_mean`` (TRL's cispo divides by the
  generation batch's tokens too); ``rlkit validate`` warns on another aggregation.
* Without ``old_logprobs`` (a single on-policy update) the ratio is 1 and the loss is REINFORCE's ``-A logprobs``.
* Train-inference mismatch correction as in ``ppo_clip`` (``tis_cap``, ``mis_low``, ``mis_high``).
"""

from __future__ import annotations

import torch

from rlkit.functional.policy_losses import cispo_loss
from rlkit.losses.mismatch import MismatchCorrection, old_logprobs
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("cispo")
class CISPOLoss(Loss):
    """Policy gradient with a detached, clipped importance weight on every token."""

    intended_aggregation = "token_mean"

    def __init__(self, eps_low: float | None = None, eps_high: float = 4.0, tis_cap: float | None = None,
                 mis_low: float | None = None, mis_high: float | None = None):
        cispo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool),
                   eps_low=eps_low, eps_high=eps_high)                    # validates the ranges before any step
        self.eps_low, self.eps_high = eps_low, eps_high
        self.mismatch = MismatchCorrection("cispo", tis_cap, mis_low, mis_high)
        self.requires = frozenset({"old_logprobs"}) if self.mismatch.enabled else frozenset()

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        old = old_logprobs(micro, "cispo")                                                    # [n, T]
        loss, metrics = cispo_loss(micro.logprobs, old, micro.batch.advantages, micro.batch.response_mask,
                                   eps_low=self.eps_low, eps_high=self.eps_high)
        return self.mismatch.apply(loss, old, micro, metrics), metrics                       # [n, T]
