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

Train-inference mismatch correction (``rlkit.functional.mismatch_weights``): the rollout engine (vLLM) samples
from a numerically slightly different policy than the trainer's pi_old. ``tis_cap`` multiplies each token's
loss by the truncated importance weight ``min(pi_old/pi_rollout, tis_cap)`` (TIS); ``mis_low``/``mis_high``
drop whole sequences whose geometric-mean ratio falls outside the band (MIS). Both need ``old_logprobs``,
which the plug-in then requires from the scoring pass. Off by default.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("ppo_clip")
class PPOClipLoss(Loss):
    """Per-token clipped surrogate with separate low/high clip ranges and an optional dual clip."""

    def __init__(self, eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: float | None = None,
                 tis_cap: float | None = None, mis_low: float | None = None, mis_high: float | None = None):
        F.check_clip_args(eps_low, eps_high, dual_clip)
        if tis_cap is not None and tis_cap <= 0:
            raise ValueError(f"ppo_clip.tis_cap must be > 0 (typical: 2.0), got {tis_cap}")
        if mis_low is not None and mis_high is not None and not 0 <= mis_low < mis_high:
            raise ValueError(f"ppo_clip needs 0 <= mis_low < mis_high, got {mis_low}, {mis_high}")
        self.eps_low, self.eps_high, self.dual_clip = eps_low, eps_high, dual_clip
        self.tis_cap, self.mis_low, self.mis_high = tis_cap, mis_low, mis_high
        self.correct = tis_cap is not None or mis_low is not None or mis_high is not None
        self.requires = frozenset({"old_logprobs"}) if self.correct else frozenset()

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = micro.batch
        if batch.advantages is None:
            raise ValueError("ppo_clip: the micro-batch has no advantages; the advantage estimator must run first")
        old = batch.old_logprobs if batch.old_logprobs is not None else micro.logprobs.detach()  # [n,T]
        loss, metrics = F.ppo_clip_loss(micro.logprobs, old, batch.advantages, batch.response_mask,
                                        eps_low=self.eps_low, eps_high=self.eps_high, dual_clip=self.dual_clip)
        if self.correct:
            weights, extra = F.mismatch_weights(old, batch.rollout_logprobs.to(old.device), batch.response_mask,
                                                tis_cap=self.tis_cap, mis_low=self.mis_low, mis_high=self.mis_high)
            loss = loss * weights                                                                   # [n,T]
            metrics.update(extra)
        return loss, metrics
