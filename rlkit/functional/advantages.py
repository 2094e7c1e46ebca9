r"""Outcome and token-level advantage maths beyond GRPO: BNPO, RLOO, REINFORCE++, whitening, GAE, value loss.

Torch in, torch out, no state (stateful parts -- an EMA of BNPO moments, the adaptive KL coefficient -- are kept
by the caller). Shapes: ``N`` completions, ``T`` response tokens, ``G`` groups. Masks are bool, True = include.
NaN reward = unscorable: left out of every statistic, advantage 0 (as ``grpo_advantages``).

BNPO, Beta Normalization Policy Optimization (Xiao, Zhang, Cao, arXiv 2506.02864; ALGORITHMS.md §3; official
code changyi7231/BNPO ``compute_bnpo_outcome_advantage``):

    r~_i = (r_i - r_min) / (r_max - r_min)                 rewards outside [r_min, r_max] -> ValueError
    p_q  = mean of r~ over the group of prompt q
    mu, s2 = mean and Bessel variance of p over the prompts (one value per prompt)
    c = mu (1 - mu) / s2 - 1,   a = c mu,   b = c (1 - mu)                        (method of moments)
    alpha = max(1 + a/3, 1),    beta = max(1 + b/3, 1)                            (paper's variance-optimal choice)
    w_q = clamp(1 / Beta_pdf(p_q; alpha, beta), 0, 1e6),    A_i = w_q (r~_i - p_q)

    alpha = beta = 1   -> A = r~ - p (REINFORCE with the group-mean baseline)
    alpha = beta = 1.5 -> A = (pi/8) (r~ - p) / sqrt(p (1 - p))  (GRPO with the population std, times pi/8)

    rlkit guards / choices: s2 <= 1e-12 or mu not in (0, 1) -> alpha = beta = 1 (the reference gives NaN for
    s2 = 0); fewer than 2 prompts -> mu = 0, s2 = 1 as the reference, hence alpha = beta = 1. Singleton groups
    (one valid reward): singleton="zero" (default) -> A = 0 and left out of (mu, s2); singleton="reference"
    -> the reference's quirk, p = 0 and included (a singleton with r = 1 then gets A = 1e6 when alpha > 1).
    A group whose valid rewards are all equal gets exactly A = 0 (p in {0, 1} has pdf 0 or inf; no NaN).
    ``moments=(mu, s2)`` replaces the batch estimate (e.g. an EMA kept by the caller; the reference has none).
    Not TRL's ``loss_type="bnpo"``, which is a loss aggregation (local token mean), see ALGORITHMS.md §11.

RLOO, leave-one-out baseline (Ahmadian et al., arXiv 2402.14740; Kool et al. 2019), n valid rewards per group:

    A_i = r_i - mean_{j != i} r_j = n / (n - 1) * (r_i - mean_g)           n < 2 -> A = 0

REINFORCE++-baseline (Hu et al., arXiv 2501.03262): group-mean baseline, then whitening over the whole batch

    x_i = r_i - mean_g,    A_i = (x_i - m) / sqrt(v + eps)
    m, v = mean and Bessel variance of x over the valid completions, each weighted by 1 (mask=None) or by its
    number of valid tokens (mask [N,T]: identical to whitening the broadcast token advantages, verl
    ``compute_reinforce_plus_plus_baseline_outcome_advantage`` with ``masked_whiten``). Singletons and NaN: A = 0,
    left out of (m, v) (verl keeps a singleton's raw reward as x). Total weight < 2: no whitening, A = x.

Whitening (verl / TRL ``masked_whiten``): ``(x - mean) * rsqrt(var_Bessel + eps)`` over the True positions,
``+ mean`` again if not ``shift_mean``; 0 outside the mask; fewer than 2 positions -> x unchanged (rlkit; both
libraries divide by zero there).

PPO with GAE (Schulman et al., arXiv 1707.06347; GAE: Schulman et al., arXiv 1506.02438; ALGORITHMS.md §10):

    r_t = -kl_coef * KL_t on valid tokens, + the outcome score on the last valid token        (token_rewards)
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   R_t = A_t + V_t  (unwhitened A)
    "t+1" = the next *valid* token (verl: next value and running A carried through mask = 0 positions, e.g.
    tool output inside a response); V = 0 and A = 0 after the last valid token (no bootstrap). A and R are 0
    outside the mask.
    value loss  = 1/2 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)       (per token, not reduced)
    adaptive KL (Ziegler et al., arXiv 1909.08593): e = clip(KL / target - 1, -0.2, 0.2);
                coef <- coef * (1 + e * n_steps / horizon)
"""

from __future__ import annotations

import math

import torch

from rlkit import ops
from rlkit.functional.checks import check_choice, check_grouped

BNPO_SINGLETONS = ("zero", "reference")
BNPO_WEIGHT_CAP = 1e6  # w = clamp(1 / pdf, 0, cap), as the reference
BNPO_VAR_FLOOR = 1e-12  # s2 at or below this -> alpha = beta = 1
RANGE_TOL = 1e-6  # rewards may exceed [r_min, r_max] by this fraction of the range (rounding)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ------------------------------------------------------------------------------------------- BNPO


def _bnpo_prompts(rewards, group_ids, r_min, r_max, singleton, fn):
    """-> r~ [N], valid [N], p [G], used [G] (prompt enters the moments / gets A != 0), n_valid [G], inverse [N]."""
    check_grouped(rewards, group_ids, fn)
    check_choice("singleton", singleton, BNPO_SINGLETONS)
    if not (math.isfinite(r_min) and math.isfinite(r_max) and r_max > r_min):
        raise ValueError(f"{fn}: need finite r_min < r_max (the reward range); got r_min={r_min!r}, r_max={r_max!r}")
    r = _float(rewards)  # [N]
    valid = ~torch.isnan(r)  # [N] bool
    tol = RANGE_TOL * (r_max - r_min)
    bad = valid & ((r < r_min - tol) | (r > r_max + tol))  # [N] bool
    if bad.any():
        raise ValueError(f"{fn}: reward {r[bad][0].item()!r} is outside [r_min, r_max] = [{r_min}, {r_max}]; BNPO "
                         f"maps rewards affinely to [0, 1] -- set r_min/r_max to the bounds of your reward")
    r01 = ((r - r_min) / (r_max - r_min)).clamp(0.0, 1.0)  # [N], NaN stays NaN
    sums, _, inverse = ops.group_sum(torch.where(valid, r01, 0.0), group_ids)  # [G], _, [N]
    n_valid, _, _ = ops.group_sum(valid.to(r.dtype), group_ids)  # [G]
    p = sums / n_valid.clamp(min=1)  # [G]
    if singleton == "reference":
        p = torch.where(n_valid == 1, 0.0, p)  # [G], the reference's singleton quirk
    used = n_valid >= (1 if singleton == "reference" else 2)  # [G] bool
    return r01, valid, p, used, n_valid, inverse


def _moments(p: torch.Tensor, used: torch.Tensor) -> tuple[float, float, int]:
    q = p[used].double()  # [P]
    if q.numel() < 2:
        return 0.0, 1.0, q.numel()  # reference: one prompt -> mu = 0, s2 = 1 (-> alpha = beta = 1)
    mu, var = torch.stack([q.mean(), q.var()]).tolist()
    return mu, var, q.numel()


def beta_norm_moments(rewards: torch.Tensor, group_ids: torch.Tensor, *, r_min: float = 0.0, r_max: float = 1.0,
                      singleton: str = "zero") -> tuple[float, float, int]:
    """BNPO batch moments (mu, Bessel s2) of the per-prompt mean rewards, and the number of prompts used.

    With fewer than 2 prompts it returns the reference's (0.0, 1.0, n_prompts): an EMA should skip that update.
    """
    _, _, p, used, _, _ = _bnpo_prompts(rewards, group_ids, r_min, r_max, singleton, "beta_norm_moments")
    return _moments(p, used)


def beta_norm_params(mu: float, var: float) -> tuple[float, float]:
    """Method-of-moments Beta(alpha, beta) for BNPO, with the rlkit guards (module docstring)."""
    mu, var = float(mu), float(var)
    if not (math.isfinite(mu) and math.isfinite(var) and var >= 0):
        raise ValueError(f"BNPO moments must be finite with var >= 0; got mu={mu!r}, var={var!r}")
    if var <= BNPO_VAR_FLOOR or not 0.0 < mu < 1.0:
        return 1.0, 1.0
    c = mu * (1.0 - mu) / var - 1.0
    return max(1.0 + c * mu / 3.0, 1.0), max(1.0 + c * (1.0 - mu) / 3.0, 1.0)


def _inverse_beta_pdf(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """clamp(1 / Beta_pdf(p; alpha, beta), 0, cap) for p [G] in [0, 1], fp64; pdf 0 at p in {0, 1} -> cap."""
    p = p.double()  # [G]
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    log_pdf = torch.xlogy(alpha - 1.0, p) + torch.xlogy(beta - 1.0, 1.0 - p) - log_b  # [G], xlogy(0, 0) = 0
    return torch.exp(-log_pdf).clamp(max=BNPO_WEIGHT_CAP)  # [G]


def beta_norm_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, r_min: float = 0.0, r_max: float = 1.0,
                         singleton: str = "zero", moments: tuple[float, float] | None = None) -> torch.Tensor:
    """BNPO advantage ``w_q (r~_i - p_q)``, one scalar per completion (module docstring).

    Args:
        rewards: [N] float in [r_min, r_max]; NaN = unscorable (A = 0, left out).  group_ids: [N] long.
        singleton: "zero" | "reference".  moments: (mu, s2) used instead of the batch estimate.

    Returns:
        [N] float advantages in units of the mapped reward r~ (rewards' dtype, at least fp32).
    """
    fn = "beta_norm_advantages"
    r01, valid, p, used, n_valid, inverse = _bnpo_prompts(rewards, group_ids, r_min, r_max, singleton, fn)
    if moments is not None and len(moments) != 2:
        raise ValueError(f"{fn}: moments must be a (mu, var) pair; got {moments!r}")
    mu, var = moments if moments is not None else _moments(p, used)[:2]
    alpha, beta = beta_norm_params(mu, var)
    w = _inverse_beta_pdf(p, alpha, beta).to(r01.dtype)  # [G]
    adv = w[inverse] * (r01 - p[inverse])  # [N]
    low, high = ops.group_min_max(r01, group_ids)  # [N], [N]
    constant = (low == high) & (n_valid[inverse] >= 2)  # [N] bool, all valid rewards equal -> exactly 0
    return torch.where(valid & used[inverse] & ~constant, adv, 0.0)  # [N]


# ----------------------------------------------------------------------------- RLOO / REINFORCE++


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantage ``n/(n-1) (r_i - mean_g)`` -> [N]; singletons and NaN rewards get 0."""
    check_grouped(rewards, group_ids, "rloo_advantages")
    r = _float(rewards)  # [N]
    mean, _, count = ops.group_mean_std(r, group_ids)  # [N], [N], [N]
    low, high = ops.group_min_max(r, group_ids)  # [N], [N]
    n = count.to(r.dtype)  # [N]
    adv = n / (n - 1).clamp(min=1) * (r - mean)  # [N]
    return torch.where(~torch.isnan(r) & (count >= 2) & (low < high), adv, 0.0)  # [N]


def reinforce_pp_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor | None = None, *,
                            eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline: group-mean baseline, then batch whitening (module docstring) -> [N].

    Args:
        rewards: [N] (NaN = unscorable).  group_ids: [N] long.
        mask: None (each valid completion weighs 1 in the whitening statistics) or the [N,T] response mask (each
            weighs its number of valid tokens = token-level whitening as verl).  eps: added to the variance.
    """
    fn = "reinforce_pp_advantages"
    check_grouped(rewards, group_ids, fn)
    if not eps >= 0:
        raise ValueError(f"{fn}: eps={eps!r} must be >= 0")
    if mask is not None and (mask.dim() != 2 or mask.shape[0] != rewards.shape[0]):
        raise ValueError(f"{fn}: mask must be None or the [N,T] response mask with N={rewards.shape[0]}; "
                         f"got shape {tuple(mask.shape)}")
    r = _float(rewards)  # [N]
    mean, _, count = ops.group_mean_std(r, group_ids)  # [N], [N], [N]
    low, high = ops.group_min_max(r, group_ids)  # [N], [N]
    valid = ~torch.isnan(r) & (count >= 2)  # [N] bool
    x = torch.where(valid & (low < high), r - mean, 0.0)  # [N], constant group -> exactly 0
    weight = valid.to(r.dtype) * (1.0 if mask is None else (mask != 0).sum(-1).to(r.dtype))  # [N]
    if weight.sum() >= 2:
        m, v = ops.masked_mean(x, weight), ops.masked_var(x, weight)  # [], []
        x = (x - m) * torch.rsqrt(v + eps)  # [N]
    return torch.where(valid, x, 0.0)  # [N]


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t'}`` backwards over each row's valid tokens (t' = the next valid token) -> [N,T].

    Positions outside ``mask`` get 0 and are skipped, not reset: a multi-turn episode's tool-output tokens sit
    between model turns, and the reward at the episode's end must reach the earlier turns (verl's REINFORCE++
    resets the running return at every masked position, which is the same on right-padded single-turn rows).

    Args:
        rewards: [N,T] per-token rewards (``token_rewards``).  mask: [N,T] bool.  gamma: in [0, 1].
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discounted_returns: gamma={gamma!r} must be in [0, 1]")
    if rewards.shape != mask.shape:
        raise ValueError(f"discounted_returns: rewards {tuple(rewards.shape)} and mask {tuple(mask.shape)} differ")
    mask = mask != 0  # [N,T] bool
    out = torch.zeros_like(rewards)  # [N,T]
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # [N]
    for t in reversed(range(rewards.shape[1])):
        step = rewards[:, t] + gamma * running  # [N]
        running = torch.where(mask[:, t], step, running)  # [N] unchanged over masked positions
        out[:, t] = torch.where(mask[:, t], running, 0.0)
    return out  # [N,T]


def reinforce_pp_discounted_advantages(scores: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
                                       kl: torch.Tensor | None = None, kl_coef: float = 0.0,
                                       eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ (no baseline; verl ``compute_reinforce_plus_plus_outcome_advantage``): token rewards (score on
    the last valid token, ``-kl_coef * kl`` on every valid one), discounted returns, whitened over every valid
    token of the batch -> [N,T]. Rows with a NaN score (unscorable) get 0 and are left out of the whitening.

    Args:
        scores: [N] (NaN = unscorable).  mask: [N,T] bool.  kl: [N,T] or None.
    """
    valid = ~torch.isnan(_float(scores))  # [N]
    mask = (mask != 0) & valid[:, None]  # [N,T]
    rewards = token_rewards(torch.where(valid, _float(scores), 0.0), mask, kl=kl, kl_coef=kl_coef)  # [N,T]
    return whiten(discounted_returns(rewards, mask, gamma), mask, eps=eps)  # [N,T]


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Masked whitening over all True positions: ``(x - mean) rsqrt(var_Bessel + eps)`` (+ mean if not shift_mean).

    ``mask`` has x's shape; positions outside it are 0 (never NaN); fewer than 2 True positions -> x, masked.
    """
    if mask.shape != x.shape:
        raise ValueError(f"whiten: mask shape {tuple(mask.shape)} must equal x shape {tuple(x.shape)}")
    if not eps >= 0:
        raise ValueError(f"whiten: eps={eps!r} must be >= 0")
    mask = mask != 0  # same shape as x, bool
    if int(mask.sum()) >= 2:
        mean, var = ops.masked_mean(x, mask), ops.masked_var(x, mask)  # [], []
        out = (x - mean) * torch.rsqrt(var + eps)  # same shape as x
        x = out if shift_mean else out + mean
    return torch.where(mask, x, 0.0)  # same shape as x


# -------------------------------------------------------------------------------------------- GAE


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, *, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token PPO rewards [N,T]: ``-kl_coef * kl`` on valid tokens + ``scores[i]`` on row i's last valid token.

    Rows without valid tokens get nothing (their score may be NaN); a NaN score elsewhere is a ValueError.
    """
    if mask.dim() != 2 or scores.shape != mask.shape[:1]:
        raise ValueError(f"token_rewards: need scores [N] and mask [N,T]; got {tuple(scores.shape)}, "
                         f"{tuple(mask.shape)}")
    mask = mask != 0  # [N,T] bool
    out = torch.zeros(mask.shape, dtype=_float(scores).dtype, device=mask.device)  # [N,T]
    if kl_coef != 0.0:
        if kl is None or kl.shape != mask.shape:
            raise ValueError(f"token_rewards: kl_coef={kl_coef!r} needs kl of shape {tuple(mask.shape)}; got "
                             f"{None if kl is None else tuple(kl.shape)}")
        out = torch.where(mask, -kl_coef * kl.to(out.dtype), 0.0)  # [N,T]
    if mask.shape[1] == 0:
        return out  # [N,0]
    t = torch.arange(mask.shape[1], device=mask.device)  # [T]
    last = (mask.long() * (t + 1)).amax(-1) - 1  # [N], -1 for an empty row
    rows = last >= 0  # [N] bool
    if torch.isnan(scores[rows]).any():
        raise ValueError("token_rewards: NaN score on a row with valid tokens; mask the row out or drop it")
    out[rows, last[rows]] += scores[rows].to(out.dtype)  # [N,T]
    return out  # [N,T]


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
                   lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unwhitened GAE advantages and returns [N,T], [N,T] (module docstring; verl masked-position semantics).

    Args:
        token_rewards: [N,T].  values: [N,T] critic values (entries outside the mask are ignored, may be NaN).
        mask: [N,T] bool.  gamma, lam: in [0, 1].
    """
    if not (token_rewards.shape == values.shape == mask.shape and mask.dim() == 2):
        raise ValueError(f"gae_advantages: token_rewards, values, mask must share one [N,T] shape; got "
                         f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae_advantages: gamma={gamma!r} and lam={lam!r} must both be in [0, 1]")
    dtype = torch.promote_types(_float(token_rewards).dtype, _float(values).dtype)
    mask = mask != 0  # [N,T] bool
    r = torch.where(mask, token_rewards.to(dtype), 0.0)  # [N,T]
    v = torch.where(mask, values.to(dtype), 0.0)  # [N,T]
    adv = torch.zeros_like(v)  # [N,T]
    next_value = last_gae = v.new_zeros(v.shape[0])  # [N], [N]
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]  # [N]
        gae = delta + gamma * lam * last_gae  # [N]
        next_value = torch.where(mask[:, t], v[:, t], next_value)  # [N], carried through masked positions
        last_gae = torch.where(mask[:, t], gae, last_gae)  # [N]
        adv[:, t] = torch.where(mask[:, t], gae, 0.0)  # [N]
    return adv, torch.where(mask, adv + v, 0.0)  # [N,T], [N,T]


def check_value_clip(clip: float | None, where: str = "value loss") -> None:
    """``clip`` must be None (no clipping) or > 0: 0 reads as "off" in some code bases and as "pin V to V_old" in
    verl (``cliprange_value=0``), so rlkit accepts neither reading silently."""
    if clip is not None and not clip > 0:
        raise ValueError(f"{where}: clip={clip!r} is ambiguous or invalid: write clip: null for no clipping, or a "
                         f"positive range such as 0.5 (verl's cliprange_value=0 would pin V to V_old)")


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *,
                       clip: float | None = 0.5) -> torch.Tensor:
    """Per-token ``1/2 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`` [N,T]; c None -> ``1/2 (V - R)^2``.

    Not masked, not reduced: aggregate with ``rlkit.functional.aggregate``.
    """
    if not values.shape == old_values.shape == returns.shape:
        raise ValueError(f"clipped_value_loss: values, old_values, returns must share one shape; got "
                         f"{tuple(values.shape)}, {tuple(old_values.shape)}, {tuple(returns.shape)}")
    check_value_clip(clip, "clipped_value_loss")
    loss = (values - returns) ** 2  # [N,T]
    if clip is not None:
        clipped = torch.clamp(values, old_values - clip, old_values + clip)  # [N,T]
        loss = torch.maximum(loss, (clipped - returns) ** 2)  # [N,T]
    return 0.5 * loss  # [N,T]


def value_clip_active(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """[N,T] bool: the clipped term wins the max, ``(clip(V) - R)^2 > (V - R)^2`` (verl ``vf_clipfrac``, TRL)."""
    clipped = torch.clamp(values, old_values - clip, old_values + clip)  # [N,T]
    return (clipped - returns) ** 2 > (values - returns) ** 2  # [N,T]


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: float, n_steps: int) -> float:
    """One update of Ziegler et al.'s adaptive KL controller (module docstring) -> the new coefficient."""
    if not (target > 0 and horizon > 0 and n_steps >= 0 and coef >= 0):
        raise ValueError(f"adaptive_kl_coef: need target > 0, horizon > 0, n_steps >= 0, coef >= 0; got "
                         f"target={target!r}, horizon={horizon!r}, n_steps={n_steps!r}, coef={coef!r}")
    error = min(max(float(observed_kl) / target - 1.0, -0.2), 0.2)
    return float(coef) * (1.0 + error * n_steps / horizon)
