"""GSPO: Group Sequence Policy Optimization (Zheng et al., arXiv 2507.18071), per token, never reduced.

    s_i    = exp( (1/|y_i|) sum_t (logprobs_t - old_logprobs_t) )      sequence-level importance ratio
    loss_t = max(-A * s_i, -A * clip(s_i, 1 - eps_low, 1 + eps_high))

``level: token`` uses GSPO-token's ``s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]`` (the form verl implements): the same
value, a per-token gradient path, identical gradients when the advantage is per sequence. The maths is
``rlkit.functional.policy_losses.gspo_loss``.

Defaults and deviations:
* ``eps_low: 3e-4``, ``eps_high: 4e-4``: the paper's clipping ranges (§5.1), two orders of magnitude below PPO's,
  because a sequence ratio is a geometric mean over many tokens.
* The paper's objective is a mean over sequences of the sequence term: ``aggregation: seq_mean_token_mean`` (verl
  forces it for gspo); ``rlkit validate`` warns on another aggregation.
* ``|y_i|`` counts the sequence's policy tokens (``response_mask``: multi-turn tool output excluded). A selection
  plug-in (D³S) that drops tokens changes which tokens' terms enter the loss, not the ratio: ``s_i`` still averages
  over every policy token of the sequence, so a kept token's weight does not depend on which others were dropped.
* Without ``old_logprobs`` (one on-policy update) ``s_i = 1``. Mismatch correction as in ``ppo_clip``.
"""

from __future__ import annotations

import torch

from rlkit.functional.policy_losses import gspo_loss
from rlkit.losses.mismatch import MismatchCorrection, old_logprobs
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("gspo")
class GSPOLoss(Loss):
    """Clipped surrogate on the sequence-level (geometric-mean) importance ratio."""

    intended_aggregation = "seq_mean_token_mean"

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4, level: str = "sequence",
                 tis_cap: float | None = None, mis_low: float | None = None, mis_high: float | None = None):
        gspo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool),
                  eps_low=eps_low, eps_high=eps_high, level=level)   # validates the options before any step
        self.eps_low, self.eps_high, self.level = eps_low, eps_high, level
        self.mismatch = MismatchCorrection("gspo", tis_cap, mis_low, mis_high)
        self.requires = frozenset({"old_logprobs"}) if self.mismatch.enabled else frozenset()

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        old = old_logprobs(micro, "gspo")                                                     # [n, T]
        loss, metrics = gspo_loss(micro.logprobs, old, micro.batch.advantages, micro.batch.response_mask,
                                  eps_low=self.eps_low, eps_high=self.eps_high, level=self.level)
        return self.mismatch.apply(loss, old, micro, metrics), metrics                       # [n, T]
