"""KL-Cov (Cui et al., "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv
2505.22617, §5; verl ``compute_policy_loss_kl_cov``), per token, never reduced.

    cov_t  = (A_t - mean A) (log pi_old_t - mean log pi_old)       over the mini-batch's trained tokens
    loss_t = -A_t r_t + kl_coef * |log r_t| * [cov_t among the top ``ratio`` share of all trained tokens]

The few tokens whose covariance drives entropy collapse get a KL-like penalty that keeps them near pi_old; the
others get the unclipped policy gradient (no PPO clip, as in the paper and verl).

Defaults and deviations:
* ``ratio: 2e-4`` and ``kl_coef: 1.0``: verl's defaults (``kl_cov_ratio``, ``ppo_kl_coef``); the paper uses 2e-3
  for its 7B run and 2e-4 for 32B.
* The means and the top-k are taken over the whole mini-batch on every process (gathered in ``prepare``), not per
  micro-batch as verl does, so the selection does not depend on micro-batch size or world size; k = max(1,
  int(ratio x trained tokens)), ties at the threshold are all selected.
* The covariance uses pi_old's log-probs (the scoring pass) where verl uses the current ones (detached): equal at
  the first optimizer step of every batch, and it makes the selection fixed for the whole mini-batch. The plug-in
  therefore requires ``old_logprobs``; with a single on-policy update |log r| = 0 and KL-Cov reduces to REINFORCE.
"""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.functional.policy_losses import kl_cov_loss, token_covariance
from rlkit.losses.covariance import covariance_means, global_kth
from rlkit.losses.mismatch import old_logprobs
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("kl_cov")
class KLCovLoss(Loss):
    """Unclipped policy gradient, |log r| penalty on the top-covariance tokens of each mini-batch."""

    requires = frozenset({"old_logprobs"})

    def __init__(self, ratio: float = 2e-4, kl_coef: float = 1.0):
        if not 0 < ratio <= 1 or not kl_coef > 0:
            raise ValueError(f"kl_cov needs 0 < ratio <= 1 and kl_coef > 0; got ratio={ratio!r}, kl_coef={kl_coef!r}")
        self.ratio, self.kl_coef = ratio, kl_coef
        self.mean_adv = self.mean_logprob = 0.0
        self.threshold = float("inf")

    def prepare(self, rows: RolloutBatch, accelerator) -> None:
        """Global means and the covariance threshold of this mini-batch (every process calls it)."""
        self.mean_adv, self.mean_logprob, n = covariance_means(rows, accelerator)
        cov = token_covariance(rows.advantages, rows.old_logprobs, self.mean_adv,
                               self.mean_logprob)[rows.response_mask]                     # [tokens]
        kth = global_kth(cov, max(1, int(n * self.ratio)), accelerator, largest=True)
        self.threshold = float("inf") if kth is None else kth

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        old = old_logprobs(micro, "kl_cov")                                                # [n, T]
        b = micro.batch
        cov = token_covariance(b.advantages, old, self.mean_adv, self.mean_logprob)        # [n, T]
        selected = (cov >= self.threshold) & b.response_mask                              # [n, T]
        loss, metrics = kl_cov_loss(micro.logprobs, old, b.advantages, b.response_mask, selected,
                                    kl_coef=self.kl_coef)
        metrics["cov_threshold"] = torch.tensor(self.threshold if self.threshold != float("inf") else 0.0)
        return loss, {**metrics, "cov_mean": ops.masked_mean(cov, b.response_mask)}
