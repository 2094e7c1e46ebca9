"""Clip-Cov (Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv
2505.22617, §5; verl ``compute_policy_loss_clip_cov``), per token, never reduced.

    cov_t  = (A_t - mean A) (log pi_old_t - mean log pi_old)       over the mini-batch's trained tokens
    band   = {t : lb < cov_t < ub}
    loss_t = 0 (no gradient) for a random max(1, int(ratio x tokens)) of the band, PPO's clipped surrogate elsewhere

Detaching a few high-covariance tokens stops them from driving entropy collapse.

Defaults and deviations:
* ``ratio: 2e-4``, ``lb: 1.0``, ``ub: 5.0``, ``eps_low = eps_high = 0.2``: verl's defaults (``clip_cov_ratio``,
  ``clip_cov_lb``, ``clip_cov_ub``, ``clip_ratio``).
* Statistics and the draw are over the whole mini-batch on every process (``prepare``), not per micro-batch: the
  draw takes the band tokens with the smallest seeded uniforms (``token_uniforms``: a hash of the run seed, the
  step, the completion and the position), so it does not depend on micro-batch size, world size or resume.
  Identical completions draw alike, so a tie can add a token.
* The covariance uses pi_old's log-probs where verl uses the current ones (equal at the first optimizer step of a
  batch), and verl also leaves tokens PPO already clipped out of the band (their gradient is 0 either way; at the
  first optimizer step, where ratio = 1, none is clipped). Requires ``old_logprobs``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.batch import RolloutBatch
from rlkit.functional.policy_losses import clip_cov_loss, token_covariance, token_uniforms
from rlkit.losses.covariance import covariance_means, global_kth
from rlkit.losses.mismatch import old_logprobs
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("clip_cov")
class ClipCovLoss(Loss):
    """PPO clip, with a seeded random share of the high-covariance tokens detached."""

    requires = frozenset({"old_logprobs"})

    def __init__(self, ratio: float = 2e-4, lb: float = 1.0, ub: float = 5.0, eps_low: float = 0.2,
                 eps_high: float = 0.2, seed: int = 0):
        if not 0 < ratio <= 1 or not lb < ub:
            raise ValueError(f"clip_cov needs 0 < ratio <= 1 and lb < ub; got ratio={ratio!r}, lb={lb!r}, ub={ub!r}")
        F.check_clip_args(eps_low, eps_high, None)
        self.ratio, self.lb, self.ub, self.eps_low, self.eps_high, self.seed = ratio, lb, ub, eps_low, eps_high, seed
        self.mean_adv = self.mean_logprob = 0.0
        self.u_max, self.calls = -1.0, 0

    def state_dict(self) -> dict:
        return {"calls": self.calls}        # the draw of optimizer step k is the same after a resume

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state.get("calls", 0))

    def _band_uniforms(self, b: RolloutBatch, old: torch.Tensor) -> torch.Tensor:
        """[n, T] uniform of each band token, 2.0 (never drawn) elsewhere."""
        cov = token_covariance(b.advantages, old, self.mean_adv, self.mean_logprob)         # [n, T]
        band = (cov > self.lb) & (cov < self.ub) & b.response_mask                         # [n, T]
        u = token_uniforms(b.response_ids, b.group_ids, b.response_mask, self.seed + 7919 * self.calls)
        return torch.where(band, u, 2.0)                                                    # [n, T]

    def prepare(self, rows: RolloutBatch, accelerator) -> None:
        """Global means, then the largest uniform among the drawn band tokens (every process calls it)."""
        self.calls += 1
        self.mean_adv, self.mean_logprob, n = covariance_means(rows, accelerator)
        u = self._band_uniforms(rows, rows.old_logprobs)
        kth = global_kth(u[u < 2.0], max(1, int(n * self.ratio)), accelerator, largest=False)  # band tokens
        self.u_max = -1.0 if kth is None else kth

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        old = old_logprobs(micro, "clip_cov")                                               # [n, T]
        detached = self._band_uniforms(micro.batch, old) <= self.u_max                      # [n, T]
        return clip_cov_loss(micro.logprobs, old, micro.batch.advantages, micro.batch.response_mask, detached,
                             eps_low=self.eps_low, eps_high=self.eps_high)
