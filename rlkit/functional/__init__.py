r"""The pure mathematics of rlkit's algorithms: torch in, torch out, no state, no I/O.

Shapes: ``N`` completions, ``T`` response tokens, ``G`` groups (all completions of one prompt).
Masks are bool, True = include (``aggregate`` also takes float token weights in [0, 1]).

GRPO advantage (Shao et al., DeepSeekMath, arXiv 2402.03300), per group g with valid rewards r:

    scale="group":  A_i = (r_i - mu_g) / (sigma_g + eps)        sigma_g = Bessel std of the group
    scale="batch":  A_i = (r_i - mu_g) / (sigma_batch + eps)    sigma_batch = Bessel std of all valid rewards
    scale="none":   A_i =  r_i - mu_g                            (Dr. GRPO, Liu et al., arXiv 2503.20783)

    NaN reward (unscorable): left out of mu and sigma, A = 0. A group whose valid rewards are all equal gets
    exactly A = 0. Single valid member: singleton="zero" -> A = 0 (TRL); singleton="raw" -> verl's
    convention mu = 0, sigma = 1, i.e. A = r / (1 + eps) for scale group/batch and A = r for scale none.

Loss aggregation (one optimizer step, global batch; L_i = trained tokens of row i, M = max_len):

    loss = sum_i coef_i * sum_t mask[i,t] * l[i,t] / Z
    token_mean               coef = 1            Z = sum_i L_i            (DAPO, arXiv 2503.14476)
    seq_mean_token_mean      coef = 1 / L_i      Z = #{i : L_i > 0}       (GRPO, arXiv 2402.03300)
    seq_mean_token_sum       coef = 1            Z = #{i : L_i > 0}
    seq_mean_token_sum_norm  coef = 1            Z = N * M                (Dr. GRPO paper / TRL "dr_grpo";
                             N counts empty rows too. NOT verl's mode of the same name, which divides each
                             micro-batch by M only.)
    Empty rows get coef 0 (their tokens are all masked anyway); Z falls back to 1 when it would be 0, so an
    all-masked batch gives exactly 0.

PPO clipped surrogate (Schulman et al., arXiv 1707.06347), per token, rho = exp(clamp(logp - logp_old, -20, 20)):

    l = max(-rho * A, -clip(rho, 1 - eps_low, 1 + eps_high) * A)      (eps_low != eps_high: DAPO clip-higher)
    dual clip (verl, c > 1, tokens with A < 0 only):  l = min(l, -c * A)

KL estimators (J. Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html), estimating
KL(pi || pi_ref) from tokens sampled from pi, with x = log pi_ref - log pi:

    k1 = -x = logp - logp_ref          (unbiased, high variance, can be negative)
    k2 = x^2 / 2                        (biased, low variance, >= 0)
    k3 = exp(x) - 1 - x                 (unbiased, low variance, >= 0; x clamped to [-20, 20] before exp so a
                                         token the reference model finds impossible cannot overflow)
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from rlkit import ops

GRPO_SCALES = ("group", "batch", "none")
GRPO_SINGLETONS = ("zero", "raw")
LOG_RATIO_CLAMP = 20.0  # |log pi - log pi_old| and |log pi_ref - log pi| are clamped to this before exp


def check_choice(name: str, value: object, options: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError naming ``name=value`` and the valid options if ``value`` is not one of them."""
    if value not in options:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, options))}")


def check_grouped(values: torch.Tensor, group_ids: torch.Tensor, where: str, *, name: str = "rewards",
                  allow_nan: bool = True) -> torch.Tensor:
    """Validate per-completion ``values`` [N] against ``group_ids`` [N]; returns them detached in float64."""
    if values.dim() != 1 or group_ids.shape != values.shape:
        raise ValueError(f"{where}: {name} {tuple(values.shape)} and group_ids {tuple(group_ids.shape)} must both be "
                         "1-D of the same length [N]")
    x = values.detach().to(torch.float64)  # [N]
    if not allow_nan and torch.isnan(x).any():
        raise ValueError(f"{where}: {name} contain NaN; score, drop or zero those completions first")
    return x


def check_grpo_args(scale: str, eps: float, singleton: str) -> None:
    """Validate the options of ``grpo_advantages``."""
    check_choice("scale", scale, GRPO_SCALES)
    check_choice("singleton", singleton, GRPO_SINGLETONS)
    if not eps >= 0:
        raise ValueError(f"eps={eps!r} must be >= 0")


def check_clip_args(eps_low: float, eps_high: float, dual_clip: float | None) -> None:
    """Validate the options of ``ppo_clip_loss``."""
    if not 0 <= eps_low < 1:
        raise ValueError(f"eps_low={eps_low!r} must be in [0, 1)")
    if not eps_high >= 0:
        raise ValueError(f"eps_high={eps_high!r} must be >= 0")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip={dual_clip!r} must be None or > 1")


# ------------------------------------------------------------------------------------------- GRPO


def _sigma_group(r: torch.Tensor, valid: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return std  # [N]


def _sigma_batch(r: torch.Tensor, valid: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ops.masked_var(torch.nan_to_num(r), valid).sqrt().expand_as(r)  # [N]


_GRPO_SIGMA: dict[str, Callable[..., torch.Tensor] | None] = {
    "group": _sigma_group, "batch": _sigma_batch, "none": None,
}
"""scale -> ``(rewards[N], valid[N], group_std[N]) -> sigma[N]`` dividing ``r - mu`` (None: no division)."""


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, scale: str = "group", eps: float = 1e-6,
                    singleton: str = "zero") -> torch.Tensor:
    """Group-relative outcome advantage, one scalar per completion (formulas in the module docstring).

    Args:
        rewards: [N] float; NaN = unscorable (excluded from the statistics, advantage 0).
        group_ids: [N] long, arbitrary ids; groups may differ in size.
        scale: "group" | "batch" | "none".  eps: added to the std.  singleton: "zero" | "raw".

    Returns:
        [N] float advantages (rewards' dtype, at least fp32).
    """
    check_grpo_args(scale, eps, singleton)
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))  # [N]
    valid = ~torch.isnan(r)  # [N] bool
    mean, std, count = ops.group_mean_std(r, group_ids)  # [N], [N], [N]
    low, high = ops.group_min_max(r, group_ids)  # [N], [N]
    raw = (count == 1) & (singleton == "raw")  # [N] bool, verl singleton: mu = 0, sigma = 1
    centred = r - torch.where(raw, 0.0, mean)  # [N]
    sigma_fn = _GRPO_SIGMA[scale]
    if sigma_fn is None:
        adv = centred  # [N]
    else:
        adv = centred / (torch.where(raw, 1.0, sigma_fn(r, valid, std)) + eps)  # [N]
    constant = (low == high) & ~raw  # [N] bool, every valid reward of the group is equal -> exactly 0
    return torch.where(valid & ~constant, adv, 0.0)  # [N]


def pool_baseline_advantages(rewards: torch.Tensor, pool_mean: torch.Tensor, pool_std: torch.Tensor, *,
                             scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """GRPO with a baseline measured by the sampler over each prompt's whole pool (Reinforce-Ada global stats).

    A_i = r_i - pool_mean_i, divided by (pool_std_i + eps) for scale "group", by (Bessel std of all valid rewards
    + eps) for "batch", not divided for "none"; NaN rewards get 0.

    Args:
        rewards: [N].  pool_mean: [N].  pool_std: [N] (> 0).  scale: "group" | "batch" | "none".  eps: > 0.

    Returns:
        [N] float advantages (at least fp32).
    """
    check_grpo_args(scale, eps, "zero")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))  # [N]
    if pool_mean.shape != r.shape or pool_std.shape != r.shape:
        raise ValueError(f"pool_mean {tuple(pool_mean.shape)} and pool_std {tuple(pool_std.shape)} must match "
                         f"rewards {tuple(r.shape)} (one value per completion)")
    valid = ~torch.isnan(r)  # [N]
    centred = r - pool_mean.to(r.dtype)  # [N]
    sigma_fn = _GRPO_SIGMA[scale]
    if sigma_fn is not None:
        centred = centred / (sigma_fn(r, valid, pool_std.to(r.dtype)) + eps)  # [N]
    return torch.where(valid, centred, 0.0)  # [N]


# ------------------------------------------------------------------------------------- aggregation


def _nonempty_count(lengths: torch.Tensor) -> float:
    """Number of rows with at least one trained token, or 1 if none."""
    return float(max(int((lengths > 0).sum()), 1))


def _plan_token_mean(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, float(max(int(lengths.sum()), 1))  # [N], Z


def _plan_seq_mean_token_mean(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    lf = lengths.to(torch.float32)  # [N]
    coef = torch.where(lengths > 0, 1.0 / lf.clamp(min=1), 0.0)  # [N]
    return coef, _nonempty_count(lengths)  # [N], Z


def _plan_seq_mean_token_sum(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, _nonempty_count(lengths)  # [N], Z


def _plan_seq_mean_token_sum_norm(lengths: torch.Tensor, *,
                                  max_len: int | None = None) -> tuple[torch.Tensor, float]:
    if max_len is None or max_len <= 0:
        raise ValueError(f"aggregation 'seq_mean_token_sum_norm' (Dr. GRPO) needs max_len > 0 (the constant "
                         f"length normaliser, e.g. the run's max response length); got max_len={max_len!r}")
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, float(max(lengths.numel(), 1) * max_len)  # [N], Z


AGGREGATION_MODES: dict[str, Callable[..., tuple[torch.Tensor, float]]] = {
    "token_mean": _plan_token_mean,
    "seq_mean_token_mean": _plan_seq_mean_token_mean,
    "seq_mean_token_sum": _plan_seq_mean_token_sum,
    "seq_mean_token_sum_norm": _plan_seq_mean_token_sum_norm,
}
"""mode -> plan function ``(lengths[N], *, max_len=None, **mode_kwargs) -> (coef[N], Z)``."""


def aggregation_plan(lengths: torch.Tensor, mode: str, *, max_len: int | None = None,
                     **kwargs) -> tuple[torch.Tensor, float]:
    """Per-sequence coefficients and the normaliser of an aggregation mode (module docstring).

    Args:
        lengths: [N] long, trained tokens per sequence (over the whole global batch).
        mode: a key of ``AGGREGATION_MODES``.  max_len: constant length normaliser M (Dr. GRPO).
        **kwargs: mode-specific options, forwarded to the plan function.

    Returns:
        coef: [N] float32, normalizer: float > 0, such that loss = Σ_i coef_i Σ_t mask·ℓ / normalizer.
    """
    check_choice("mode", mode, list(AGGREGATION_MODES))
    plan_fn = AGGREGATION_MODES[mode]
    known = set(inspect.signature(plan_fn).parameters) - {"lengths", "max_len"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"aggregation {mode!r} has no option(s) {unknown}; its options: {sorted(known) or 'none'}")
    return plan_fn(lengths, max_len=max_len, **kwargs)  # [N], float


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, *, max_len: int | None = None,
              **kwargs) -> torch.Tensor:
    """Reduce per-token losses to one scalar: Σ_i coef_i Σ_t mask·ℓ / Z with the plan of ``mode``.

    Args:
        loss: [N,T] per-token loss.  mask: [N,T] bool, or float weights in [0, 1] (a token counts in the
            lengths when its weight is > 0).  mode, max_len, **kwargs: as in ``aggregation_plan``.

    Returns:
        [] scalar; exactly 0 for an all-masked batch.
    """
    lengths = (mask > 0).sum(-1)  # [N]
    coef, normalizer = aggregation_plan(lengths, mode, max_len=max_len, **kwargs)  # [N], float
    per_seq = ops.masked_sum(loss, mask, dim=-1)  # [N]
    return (coef.to(per_seq.dtype) * per_seq).sum() / normalizer  # []


# -------------------------------------------------------------------------------------------- PPO


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, eps_low: float = 0.2, eps_high: float = 0.2,
                  dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped PPO surrogate (module docstring), never reduced.

    Args:
        logprobs: [N,T] current policy, with grad.  old_logprobs: [N,T] behaviour policy (no grad).
        advantages: [N] (broadcast over T) or [N,T].  mask: [N,T] bool (non-bool: entries != 0 count).

    Returns:
        loss: [N,T], 0 where mask is False.
        metrics: scalar tensors, masked token means: "clip_frac" (clipped branch active = clip_frac_low +
            clip_frac_high), "clip_frac_low" (A < 0 and ratio < 1 - eps_low), "clip_frac_high" (A > 0 and
            ratio > 1 + eps_high), "dual_clip_frac" (A < 0 and ratio > dual_clip), "ratio_mean", and
            "approx_kl" = k3 estimate of KL(pi_old || pi) = ratio - 1 - log ratio (>= 0, unbiased on tokens
            sampled from pi_old).
    """
    check_clip_args(eps_low, eps_high, dual_clip)
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [N,1] or [N,T]
    mask = mask if mask.dtype == torch.bool else mask != 0  # [N,T] bool
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N,T]
    ratio = torch.exp(log_ratio)  # [N,T]
    unclipped = -adv * ratio  # [N,T]
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [N,T]
    loss = torch.maximum(unclipped, clipped)  # [N,T]
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)  # [N,T]
    loss = torch.where(mask, loss, 0.0)  # [N,T]
    with torch.no_grad():
        adv_full = adv.expand_as(ratio)  # [N,T]
        low = (adv_full < 0) & (ratio < 1.0 - eps_low)  # [N,T] bool
        high = (adv_full > 0) & (ratio > 1.0 + eps_high)  # [N,T] bool
        dual = (adv_full < 0) & (ratio > dual_clip) if dual_clip is not None else torch.zeros_like(low)  # [N,T]
        metrics = {
            "clip_frac": ops.masked_mean((low | high).float(), mask),
            "clip_frac_low": ops.masked_mean(low.float(), mask),
            "clip_frac_high": ops.masked_mean(high.float(), mask),
            "dual_clip_frac": ops.masked_mean(dual.float(), mask),
            "ratio_mean": ops.masked_mean(ratio, mask),
            "approx_kl": ops.masked_mean(ratio - 1.0 - log_ratio, mask),
        }
    return loss, metrics  # [N,T], {name: []}


# --------------------------------------------------------------------------------------------- KL


def _kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs  # [N,T]


def _kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [N,T]


def _kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    x = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N,T]
    return torch.exp(x) - 1.0 - x  # [N,T]


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3,
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) (module docstring), not masked, not reduced.

    Args:
        logprobs: [N,T] current policy (with grad).  ref_logprobs: [N,T] reference policy.
        kind: "k1" | "k2" | "k3".

    Returns:
        [N,T] per-token KL estimate.
    """
    check_choice("kind", kind, list(KL_ESTIMATORS))
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)  # [N,T]


# ------------------------------------------------------------------------ train-inference mismatch


def mismatch_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, *,
                     tis_cap: float | None = None, mis_low: float | None = None,
                     mis_high: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights correcting for the rollout engine sampling from a slightly different policy.

    Per token ``rho_t = pi_old(y_t) / pi_rollout(y_t) = exp(old_logprobs - rollout_logprobs)``.

    * TIS (truncated importance sampling, token level): ``w_t = min(rho_t, tis_cap)`` (Yao et al., "Your
      efficient RL framework secretly brings you off-policy RL training", 2025).
    * MIS (masked importance sampling, sequence level): a sequence whose geometric-mean ratio
      ``exp(mean_t log rho_t)`` lies outside ``[mis_low, mis_high]`` gets weight 0 (rlkit uses the geometric mean,
      not the product, so the threshold does not depend on the response length).

    Args:
        old_logprobs, rollout_logprobs: [N,T]; mask: [N,T] bool.
    Returns:
        weights [N,T] (no grad, 0 where masked), metrics: "tis_clip_frac" (tokens with rho > cap),
        "mis_masked_frac" (sequences dropped), "mismatch_kl" (k3 estimate of KL(pi_rollout || pi_old) on the
        sampled tokens), "rho_mean".
    """
    mask = mask if mask.dtype == torch.bool else mask != 0  # [N,T]
    with torch.no_grad():
        log_rho = (old_logprobs - rollout_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP) * mask  # [N,T]
        rho = torch.exp(log_rho)  # [N,T]
        weights = rho.clamp(max=tis_cap) if tis_cap is not None else torch.ones_like(rho)  # [N,T]
        lengths = mask.sum(-1).clamp(min=1)  # [N]
        geo = torch.exp(log_rho.sum(-1) / lengths)  # [N]
        keep = torch.ones_like(geo, dtype=torch.bool)  # [N]
        if mis_low is not None:
            keep &= geo >= mis_low
        if mis_high is not None:
            keep &= geo <= mis_high
        weights = torch.where(mask & keep[:, None], weights, 0.0)  # [N,T]
        metrics = {
            "tis_clip_frac": ops.masked_mean((rho > tis_cap).float(), mask) if tis_cap is not None
            else torch.zeros(()),
            "mis_masked_frac": (~keep).float().mean() if len(keep) else torch.zeros(()),
            "mismatch_kl": ops.masked_mean(rho - 1.0 - log_rho, mask),
            "rho_mean": ops.masked_mean(rho, mask),
        }
    return weights, metrics  # [N,T], {name: []}


# Advantage estimators beyond GRPO, PPO-GAE pieces, and max@k live in their own modules (re-exported here so the
# whole functional core stays importable as ``rlkit.functional``).
from rlkit.functional.advantages import (adaptive_kl_coef, beta_norm_advantages, beta_norm_moments,  # noqa: E402, F401
                                         beta_norm_params, check_value_clip, clipped_value_loss,
                                         discounted_returns, gae_advantages, reinforce_pp_advantages,
                                         reinforce_pp_discounted_advantages, rloo_advantages, token_rewards,
                                         value_clip_active, whiten)
from rlkit.functional.max_at_k import (MAX_AT_K_BASELINES, max_at_k_advantages, max_at_k_estimate,  # noqa: E402, F401
                                       max_at_k_offpolicy_rewards, max_at_k_rewards, pass_at_k)
from rlkit.functional.delta_l import plan_delta_l  # noqa: E402

AGGREGATION_MODES["delta_l"] = plan_delta_l   # aggregate(loss, mask, "delta_l", max_len=M, alpha=0.75)
from rlkit.functional.selection import (cosine_schedule, d3s_keep_count, d3s_select_samples,  # noqa: E402, F401
                                        d3s_select_tokens, linear_schedule)
from rlkit.functional.gvm import gvm_allocation  # noqa: E402, F401
from rlkit.functional.reinforce_ada import (reinforce_ada_advantages, reinforce_ada_exit,  # noqa: E402, F401
                                            reinforce_ada_pool_stats, reinforce_ada_select)
from rlkit.functional.vade import vade_decay, vade_posterior_stats, vade_scores, vade_update  # noqa: E402, F401
