"""GAE advantage for PPO with a critic (Schulman et al., arXiv 1707.06347; GAE: arXiv 1506.02438; ALGORITHMS.md §10).

Token-level MDP over the response, with V from the critic's scoring pass (``critic:`` section):

    r_t = -kl_coef * KL_t (if the KL penalty is in the reward) + outcome reward on the last response token
    delta_t = r_t + gamma V_{t+1} - V_t,    A_t = delta_t + gamma lam A_{t+1},    R_t = A_t + V_t
    A <- (A - mean) / sqrt(var_Bessel + 1e-8) over all valid tokens (``whiten``, default on; R uses raw A)

V = 0 after the last token (no bootstrap on truncation, as verl and TRL). The value targets R go to
``batch.returns`` for the ``value`` loss. Maths: ``rlkit.functional.gae_advantages`` / ``token_rewards`` /
``whiten``.

KL to the reference, two placements:
* in the reward (this plug-in): ``kl_coef > 0`` with KL_t = ``kl_estimator``(log pi_old, log pi_ref) per token
  (k1 = log pi_old - log pi_ref, verl/TRL default); fixed, or adaptive (Ziegler et al., arXiv 1909.08593) when
  ``kl_target`` is set: coef <- coef (1 + clip(KL/target - 1, -0.2, 0.2) * N / kl_horizon) after each batch,
  N = completions of the batch. The coefficient is checkpointed.
* in the loss: leave ``kl_coef: 0`` and add ``{name: kl, beta: ...}`` to ``losses``.

Defaults gamma = lam = 1 (verl; TRL uses lam = 0.95). rlkit choices: whitening uses this process's batch (groups
never span processes, but tokens of other processes are not included); a batch with < 2 valid tokens is not
whitened.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AdvantageEstimator
from rlkit.registry import ADVANTAGES


@ADVANTAGES.register("gae")
class GAEAdvantage(AdvantageEstimator):
    """Generalized advantage estimation over response tokens, from critic values; sets ``batch.returns``."""

    def __init__(self, gamma: float = 1.0, lam: float = 1.0, whiten: bool = True, kl_coef: float = 0.0,
                 kl_estimator: str = "k1", kl_target: float | None = None, kl_horizon: float = 10000.0):
        if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
            raise ValueError(f"gamma={gamma} and lam={lam} must be in [0, 1]")
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef={kl_coef} must be >= 0")
        F.check_choice("kl_estimator", kl_estimator, list(F.KL_ESTIMATORS))
        if kl_target is not None and not (kl_target > 0 and kl_coef > 0 and kl_horizon > 0):
            raise ValueError(f"the adaptive KL controller (kl_target={kl_target}) needs kl_target > 0, an initial "
                             f"kl_coef > 0 (got {kl_coef}) and kl_horizon > 0 (got {kl_horizon})")
        self.gamma, self.lam, self.whiten = gamma, lam, whiten
        self.kl_coef, self.kl_estimator, self.kl_target, self.kl_horizon = kl_coef, kl_estimator, kl_target, kl_horizon
        self.outputs = frozenset({"returns"})   # the critic's value targets, written to batch.returns
        self.requires = frozenset({"values"} | ({"old_logprobs", "ref_logprobs"} if kl_coef > 0 else set()))

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.values is None:
            raise ValueError("advantage 'gae' needs critic values (batch.values); add a `critic:` section")
        mask = batch.response_mask                                                         # [N, T] bool
        kl, metrics = None, {}
        if self.kl_coef > 0:
            kl = torch.where(mask, F.kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.kl_estimator), 0.0)
            metrics["kl"] = ops.masked_mean(kl, mask).item()                               # [N, T] -> scalar
        scores = torch.nan_to_num(batch.rewards.float())                                   # [N] unscorable -> 0
        rewards_t = F.token_rewards(scores, mask, kl=kl, kl_coef=self.kl_coef)            # [N, T]
        adv, returns = F.gae_advantages(rewards_t, batch.values.float(), mask, gamma=self.gamma,
                                        lam=self.lam)                                      # [N, T], [N, T]
        batch.returns = returns
        metrics.update(kl_coef=self.kl_coef, raw_mean=ops.masked_mean(adv, mask).item(),
                       returns_mean=ops.masked_mean(returns, mask).item(),
                       values_mean=ops.masked_mean(batch.values.float(), mask).item(),
                       explained_var=_explained_variance(batch.values.float(), returns, mask))
        if self.whiten:
            adv = F.whiten(adv, mask)                                                      # [N, T]
        if self.kl_target is not None and kl is not None:
            self.kl_coef = F.adaptive_kl_coef(self.kl_coef, metrics["kl"], self.kl_target, self.kl_horizon,
                                              len(batch))
        return adv, metrics

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef} if self.kl_target is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.kl_coef = float(state["kl_coef"])


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens (1 = perfect critic, 0 = no better than a constant)."""
    var_r = ops.masked_var(returns, mask).item() if mask.sum() > 1 else 0.0
    if var_r <= 1e-12:
        return 0.0
    return 1.0 - ops.masked_var(returns - values, mask).item() / var_r
