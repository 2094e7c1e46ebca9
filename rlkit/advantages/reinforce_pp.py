"""REINFORCE++ advantages (Hu et al., arXiv 2501.03262): ``mode: baseline`` (default) or ``mode: discounted``.

baseline ("REINFORCE++-baseline")::

    x_i = r_i - mean_g(r)                        group-mean baseline
    A_i = (x_i - m) / sqrt(v + eps)              whitening over the whole batch

discounted (the paper's original form; verl ``compute_reinforce_plus_plus_outcome_advantage``)::

    r_t = -kl_coef * KL_t + [t = last] * r_i     token rewards (``kl_coef`` needs the reference model)
    G_t = r_t + gamma * G_{t+1}                  token-level discounted return
    A_t = whiten(G) over every valid token of the batch

In discounted mode masked positions inside a row (multi-turn tool output) are skipped, not reset (verl resets;
identical on single-turn rows), so the final reward reaches every model turn. ``gamma: 1, kl_coef: 0`` is the
whitened outcome reward without a baseline.

m, v: mean and Bessel variance of x over the batch's valid completions, each weighted by its number of response
tokens (``token_weighted: true``, default: the same as whitening the broadcast token advantages over all valid
tokens, as verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage``) or by 1 (``token_weighted: false``).
Singleton groups and NaN rewards get A = 0 and are left out of (m, v) (rlkit; verl keeps a singleton's raw
reward). Fewer than 2 weights: no whitening. The "batch" is this process's batch (groups never span processes).
Maths: ``rlkit.functional.reinforce_pp_advantages``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.advantages.rloo import _stats
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("reinforce_pp")
class ReinforcePPAdvantage(AdvantageEstimator):
    """Group-mean baseline, then batch whitening."""

    def __init__(self, token_weighted: bool = True, eps: float = 1e-8, mode: str = "baseline", gamma: float = 1.0,
                 kl_coef: float = 0.0, kl_estimator: str = "k1"):
        if not eps > 0:
            raise ValueError(f"eps={eps} must be > 0")
        F.check_choice("reinforce_pp.mode", mode, ("baseline", "discounted"))
        F.check_choice("kl_estimator", kl_estimator, list(F.KL_ESTIMATORS))
        if not (0.0 <= gamma <= 1.0 and kl_coef >= 0):
            raise ValueError(f"reinforce_pp needs gamma in [0, 1] and kl_coef >= 0; got {gamma}, {kl_coef}")
        if mode == "baseline" and (gamma != 1.0 or kl_coef != 0.0):
            raise ValueError("reinforce_pp: gamma and kl_coef apply to mode: discounted; set mode: discounted "
                             "or remove them")
        self.token_weighted, self.eps, self.mode = token_weighted, eps, mode
        self.gamma, self.kl_coef, self.kl_estimator = gamma, kl_coef, kl_estimator
        self.requires = frozenset({"old_logprobs", "ref_logprobs"}) if kl_coef > 0 else frozenset()

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.mode == "discounted":
            kl = None
            if self.kl_coef > 0:
                kl = F.kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.kl_estimator)  # [N, T]
            adv = F.reinforce_pp_discounted_advantages(batch.rewards, batch.response_mask, gamma=self.gamma,
                                                       kl=kl, kl_coef=self.kl_coef, eps=self.eps)  # [N, T]
            return adv, _stats(adv[batch.response_mask])
        mask = batch.response_mask if self.token_weighted else None
        adv = F.reinforce_pp_advantages(batch.rewards, batch.group_ids, mask, eps=self.eps)  # [N]
        return adv[:, None] * batch.response_mask.to(adv.dtype), _stats(adv)              # [N, T]
