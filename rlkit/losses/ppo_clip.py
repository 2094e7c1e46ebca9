"""Clipped PPO policy surrogate (Schulman et al., arXiv 1707.06347), per token, never reduced.

    ratio = exp(clamp(logprobs - old_logprobs, -20, 20))
    loss  = max(-ratio * A, -clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    dual clip (c = dual_clip > 1, tokens with A < 0):  loss = min(loss, -c * A)

``eps_high > eps_low`` is DAPO's clip-higher (arXiv 2503.14476); the dual clip is verl's ``clip_ratio_c``.
The maths is ``rlkit.functional.ppo_clip_loss``.

Deviations / choices:
* When the batch carries no ``old_logprobs`` (the trainer did not score the old policy, i.e. a single
  on-policy update), the current log-probs, detached, stand in for them: ratio = 1 and the loss is -A with
  gradient -A * grad(log pi), as TRL does with ``num_iterations=1``.
* The log-ratio clamp to [-20, 20] follows verl and only guards exp() against overflow.

Train-inference mismatch correction (``tis_cap``, ``mis_low``, ``mis_high``; ``rlkit.losses.mismatch``): off by
default; when on, the plug-in requires ``old_logprobs`` from the scoring pass.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.losses.mismatch import MismatchCorrection, old_logprobs
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("ppo_clip")
class PPOClipLoss(Loss):
    """Per-token clipped surrogate with separate low/high clip ranges and an optional dual clip."""

    def __init__(self, eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: float | None = None,
                 tis_cap: float | None = None, mis_low: float | None = None, mis_high: float | None = None):
        F.check_clip_args(eps_low, eps_high, dual_clip)
        self.eps_low, self.eps_high, self.dual_clip = eps_low, eps_high, dual_clip
        self.mismatch = MismatchCorrection("ppo_clip", tis_cap, mis_low, mis_high)
        self.requires = frozenset({"old_logprobs"}) if self.mismatch.enabled else frozenset()

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        old = old_logprobs(micro, "ppo_clip")                                                       # [n,T]
        loss, metrics = F.ppo_clip_loss(micro.logprobs, old, micro.batch.advantages, micro.batch.response_mask,
                                        eps_low=self.eps_low, eps_high=self.eps_high, dual_clip=self.dual_clip)
        return self.mismatch.apply(loss, old, micro, metrics), metrics                             # [n,T]
