"""BNPO advantage: Beta-density normalization (Xiao, Zhang, Cao, arXiv 2506.02864; ALGORITHMS.md §3).

    r~ = (r - r_min) / (r_max - r_min),   p_q = group mean of r~,   (mu, s2) = mean, Bessel var of p over prompts
    c = mu (1 - mu) / s2 - 1,   alpha = max(1 + c mu / 3, 1),   beta = max(1 + c (1 - mu) / 3, 1)
    A_i = clamp(1 / Beta_pdf(p_q; alpha, beta), 0, 1e6) * (r~_i - p_q)

alpha and beta are re-estimated by moment matching on every batch, as in the official code. The maths, guards and
identities (alpha = beta = 1 -> r - p; alpha = beta = 1.5 -> pi/8 x GRPO with population std) are in
``rlkit.functional.beta_norm_advantages``.

Not TRL's ``loss_type="bnpo"``: that is a loss *aggregation* (token mean over the local micro-batch) and leaves the
advantage alone; this estimator changes the advantage and works with any aggregation (the authors ran
``seq_mean_token_sum``). See ALGORITHMS.md §11.

Options and rlkit choices:
* ``singleton``: "zero" (default) -> a single-member group gets A = 0 and is left out of (mu, s2);
  "reference" -> the official code's quirk (p = 0, included).
* ``decomposition: true``: advantage decomposition of the official code (``use_advantage_decomposition``): the
  BNPO advantage of each reward component (``reward.functions``, each mapped with r_min/r_max) separately,
  averaged: A = (1/K) sum_k A_k. Needs every component inside [r_min, r_max] (binary in the paper).
* ``ema``: an rlkit extension, off by default (null). With a decay d in (0, 1), (mu, s2) are an exponential
  moving average over steps, m <- d m + (1 - d) m_batch, seeded by the first batch; the state is checkpointed.
  A batch with fewer than 2 prompts does not update it. Not used with ``decomposition``.
* Rewards are normalised over this process's batch (groups never span processes).
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("beta_norm")
class BetaNormAdvantage(AdvantageEstimator):
    """BNPO: (r - p) / Beta_pdf(p; alpha, beta) with alpha, beta moment-matched to the batch's success rates."""

    def __init__(self, r_min: float = 0.0, r_max: float = 1.0, singleton: str = "zero", decomposition: bool = False,
                 ema: float | None = None):
        if not r_max > r_min:
            raise ValueError(f"r_max={r_max} must be greater than r_min={r_min}")
        F.check_choice("singleton", singleton, list(F.advantages.BNPO_SINGLETONS))
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema={ema} must be a decay in (0, 1), or null for per-batch moments (the paper)")
        if ema is not None and decomposition:
            raise ValueError("ema and decomposition cannot be combined (one moment estimate per component)")
        self.r_min, self.r_max, self.singleton = r_min, r_max, singleton
        self.decomposition, self.ema = decomposition, ema
        self.moments: tuple[float, float] | None = None

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        kw = {"r_min": self.r_min, "r_max": self.r_max, "singleton": self.singleton}
        metrics: dict[str, float] = {}
        if self.decomposition:
            comps = batch.reward_components.float()                                        # [N, K]
            adv = torch.stack([F.beta_norm_advantages(comps[:, k], batch.group_ids, **kw)
                               for k in range(comps.shape[1])], -1).mean(-1)               # [N]
        else:
            mu, var, n = F.beta_norm_moments(batch.rewards, batch.group_ids, **kw)
            if self.ema is not None and n >= 2:
                d = self.ema
                self.moments = (mu, var) if self.moments is None else \
                    (d * self.moments[0] + (1 - d) * mu, d * self.moments[1] + (1 - d) * var)
            if self.ema is not None and self.moments is not None:
                mu, var = self.moments
            adv = F.beta_norm_advantages(batch.rewards, batch.group_ids, moments=(mu, var), **kw)   # [N]
            alpha, beta = F.beta_norm_params(mu, var)
            metrics = {"alpha": alpha, "beta": beta, "mu": mu, "var": var}
        advantages = adv[:, None] * batch.response_mask.to(adv.dtype)                       # [N, T]
        return advantages, metrics | {"mean": adv.mean().item() if adv.numel() else 0.0,
                                      "abs_mean": adv.abs().mean().item() if adv.numel() else 0.0}

    def state_dict(self) -> dict:
        return {"moments": self.moments} if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self.ema is None:
            raise ValueError("the checkpoint holds BNPO EMA moments but advantage.ema is off in this recipe")
        self.moments = state.get("moments") if state else None
