"""The pure mathematics of rlkit's algorithms: torch in, torch out, no state, no I/O.

Shapes: ``N`` completions, ``T`` response tokens, ``G`` groups (all completions of one prompt). Masks are bool,
True = include; float per-token *weights* in [0, 1] are called ``weights`` (``aggregate`` takes either: a token
counts in the lengths when its weight is > 0). Each topic is a module whose docstring holds its formulas:

    checks         check_choice, check_grouped, LOG_RATIO_CLAMP (shared by the modules below)
    grpo           GRPO / Dr. GRPO group-relative advantages, Reinforce-Ada's pool baseline
    advantages     RLOO, REINFORCE++, BNPO (beta_norm), GAE and the value loss, whitening, adaptive KL
    aggregation    loss aggregation plans (token_mean, seq_mean_*, Dr. GRPO, delta_l) and ``aggregate``
    delta_l        the ΔL minimum-variance aggregation plan
    ppo            the clipped PPO surrogate (dual clip, clip-higher)
    policy_losses  CISPO, GSPO, Clip-Cov, KL-Cov
    kl             k1 / k2 / k3 KL estimators
    mismatch       train-inference mismatch weights (TIS, MIS)
    max_at_k       max@k / pass@k rewards, advantages and estimates
    selection      D³S sample and token selection, schedules
    gvm / reinforce_ada / vade   the adaptive samplers' mathematics

This package only re-exports them (``from rlkit.functional import grpo_advantages``); modules inside it import from
the topic modules, never from the package, so importing it runs no cycle.
"""

from rlkit.functional.checks import LOG_RATIO_CLAMP, check_choice, check_grouped
from rlkit.functional.grpo import (GRPO_SCALES, GRPO_SINGLETONS, check_grpo_args, grpo_advantages,
                                   pool_baseline_advantages)
from rlkit.functional.aggregation import AGGREGATION_MODES, aggregation_plan, aggregate
from rlkit.functional.ppo import check_clip_args, ppo_clip_loss
from rlkit.functional.kl import KL_ESTIMATORS, kl_penalty
from rlkit.functional.mismatch import mismatch_weights
from rlkit.functional.advantages import (adaptive_kl_coef, beta_norm_advantages, beta_norm_moments, beta_norm_params,
                                         check_value_clip, clipped_value_loss, discounted_returns, gae_advantages,
                                         reinforce_pp_advantages, reinforce_pp_discounted_advantages, rloo_advantages,
                                         token_rewards, value_clip_active, whiten)
from rlkit.functional.max_at_k import (MAX_AT_K_BASELINES, max_at_k_advantages, max_at_k_estimate,
                                       max_at_k_offpolicy_rewards, max_at_k_rewards, pass_at_k)
from rlkit.functional.delta_l import plan_delta_l
from rlkit.functional.selection import (cosine_schedule, d3s_keep_count, d3s_select_samples, d3s_select_tokens,
                                        linear_schedule)
from rlkit.functional.gvm import gvm_allocation
from rlkit.functional.reinforce_ada import (reinforce_ada_advantages, reinforce_ada_exit, reinforce_ada_pool_stats,
                                            reinforce_ada_select)
from rlkit.functional.vade import vade_decay, vade_posterior_stats, vade_scores, vade_update

__all__ = [
    "AGGREGATION_MODES", "GRPO_SCALES", "GRPO_SINGLETONS", "KL_ESTIMATORS", "LOG_RATIO_CLAMP", "MAX_AT_K_BASELINES",
    "adaptive_kl_coef", "aggregate", "aggregation_plan", "beta_norm_advantages", "beta_norm_moments",
    "beta_norm_params", "check_choice", "check_clip_args", "check_grouped", "check_grpo_args", "check_value_clip",
    "clipped_value_loss", "cosine_schedule", "d3s_keep_count", "d3s_select_samples", "d3s_select_tokens",
    "discounted_returns", "gae_advantages", "grpo_advantages", "gvm_allocation", "kl_penalty", "linear_schedule",
    "max_at_k_advantages", "max_at_k_estimate", "max_at_k_offpolicy_rewards", "max_at_k_rewards", "mismatch_weights",
    "pass_at_k", "plan_delta_l", "pool_baseline_advantages", "ppo_clip_loss", "reinforce_ada_advantages",
    "reinforce_ada_exit", "reinforce_ada_pool_stats", "reinforce_ada_select", "reinforce_pp_advantages",
    "reinforce_pp_discounted_advantages", "rloo_advantages", "token_rewards", "vade_decay", "vade_posterior_stats",
    "vade_scores", "vade_update", "value_clip_active", "whiten",
]
