"""max@k objective: maximise the expected best reward of k samples (pass@k for binary rewards).

Paper: Bagirov et al., "The Best of N Worlds: Aligning RL with Best-of-N Sampling via max@k Optimisation",
arXiv 2510.23393 (on-policy estimator = PKPO, Walder & Karkhanis). Maths: ``rlkit.functional.max_at_k``.

Per group of n completions (rewards continuous or binary), with the paper's transformed reward

    r~_i = (1/C(n,k)) sum_{|S|=k, S∋i} max_{j in S} r_j          (sum_i r~_i = k * unbiased max@k estimate)

the objective returns, per ``baseline``:

    bon_mean (default, the paper's best)  z-score of r~ in the group (Bessel std + eps)        -> advantages
    loo1            r~_i - (k/n) rho_{-i}(n-1, k-1)     (unbiased, Walder & Karkhanis)         -> advantages
    bon_max_mean    r_max - mean(r) on the best completion(s), 0 elsewhere                   -> advantages
    bon_max_second  r_max - (best reward below r_max) on the best completion(s)             -> advantages
    loo   [rlkit]   r~_i - (k/n) rho_{-i}(n-1, k)        (unbiased; k <= n-1)                  -> advantages
    none  [rlkit]   r~ itself                                                                -> rewards

A baseline other than ``none`` already yields advantages, so it goes with ``advantage: passthrough`` (rlkit
refuses another estimator on top, which would subtract a second baseline). ``baseline: none`` hands r~ to any
estimator: ``none`` + ``advantage: grpo`` is exactly ``bon_mean``.

On- and off-policy (rlkit choice): the per-sequence values are computed once per rollout batch from the
rollout rewards (the on-policy estimator), and every PPO epoch / mini-batch uses them through the loss's usual
token-level importance ratio and clip. The paper's first-order off-policy weights
(``max_at_k_offpolicy_rewards``, §3.3) need the current policy's sequence ratios inside every mini-step; they are
in the functional core but not wired into this plug-in. Unscorable completions (NaN reward) are left out of
their group (n counts valid completions) and get 0; a group with fewer than k valid completions (fewer than
k + 1 for ``loo``) gets 0 -- with variable group sizes (``sampler: gvm``) that includes singletons; the
functional form refuses such groups instead.
"""

from __future__ import annotations

import torch

from rlkit.functional.max_at_k import MAX_AT_K_BASELINES, max_at_k_advantages, max_at_k_rewards
from rlkit.plugin_api import Objective
from rlkit.registry import OBJECTIVES


@OBJECTIVES.register("max_at_k")
class MaxAtKObjective(Objective):
    """Per-group max@k transform of the rewards (r~), optionally with the paper's baselines applied."""

    def __init__(self, k: int, baseline: str = "bon_mean", eps: float = 1e-6, group_size: int | None = None):
        if baseline not in MAX_AT_K_BASELINES:
            raise ValueError(f"baseline '{baseline}' is not one of {', '.join(MAX_AT_K_BASELINES)}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an integer >= 1")
        if group_size is not None and k > group_size:
            raise ValueError(f"k={k} is larger than the group size rollout.n={group_size}: max@k needs n >= k "
                             "samples per prompt; lower k or raise rollout.n")
        if baseline == "loo" and group_size is not None and k > group_size - 1:
            raise ValueError(f"baseline 'loo' needs k <= rollout.n - 1 = {group_size - 1}, got k={k}")
        self.k, self.baseline, self.eps = k, baseline, eps
        self.output = "reward" if baseline == "none" else "advantage"

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:  # [N], [N] -> [N]
        out = torch.zeros_like(rewards, dtype=torch.float32)                               # [N]
        valid = ~torch.isnan(rewards)                                                       # [N] bool
        _, inverse, counts = torch.unique(group_ids[valid], return_inverse=True, return_counts=True)
        usable = valid.clone()
        need = self.k + 1 if self.baseline == "loo" else self.k   # "loo" needs k <= n - 1
        usable[valid] = counts[inverse] >= need          # smaller groups (e.g. GVM's singletons) get 0
        if usable.any():
            r, g = rewards[usable].float(), group_ids[usable]                               # [n], [n]
            if self.baseline == "none":
                out[usable] = max_at_k_rewards(r, g, self.k)
            else:
                out[usable] = max_at_k_advantages(r, g, self.k, baseline=self.baseline, eps=self.eps)
        return out
