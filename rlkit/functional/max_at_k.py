r"""max@k: optimise the expected best of k samples instead of the mean reward.

Paper: Bagirov, Arkhipov, Sycheva, Glukhov, Bogomolov, "The Best of N Worlds: Aligning Reinforcement Learning
with Best-of-N Sampling via max@k Optimisation", arXiv 2510.23393. The on-policy estimator is PKPO (Walder &
Karkhanis, "Pass@k Policy Optimization"). Spec: ALGORITHMS.md §9.

Per group (one prompt, n >= k completions), rewards sorted ascending r_(1) <= ... <= r_(n), C(a,b) = 0 when
b < 0 or a < b:

    objective      max@k = E_{y_1..y_k ~ pi} [max_j r(y_j)]           (binary rewards: pass@k)
    estimate       rho(n,k) = (1/C(n,k)) sum_{i>=k} C(i-1,k-1) r_(i)    (unbiased; paper App. C.1)
    on-policy      grad ~= sum_i r~_i grad log pi(y_i),   r~_i = (1/C(n,k)) sum_{|S|=k, S∋i} max_{j in S} r_j
                   sorted: r~_(i) = (1/C(n,k)) [C(i-1,k-1) r_(i) + sum_{j>i} C(j-2,k-2) r_(j)]
                   (the paper's scale, k/n factor included: sum_i r~_i = k rho(n,k); k=1: r/n; k=n: max r)

Advantages (the paper's variance reductions, §4.3 / App. A; rlkit additions marked):

    bon_mean        (r~_i - mean_g r~) / (std_g r~ + eps), std = Bessel (ddof=1), eps = 1e-6 [rlkit choice,
                    same as rlkit's GRPO]. Biased (depends on y_i through mean/std) but best in the paper.
    loo1            r~_i - (1/C(n,k)) sum_{S∋i} max_{S\i} r = r~_i - (k/n) rho_{-i}(n-1,k-1)
                    = (1/C(n,k)) sum_{j<i} C(j-1,k-2) (r_(i) - r_(j)) >= 0.  Unbiased. k=1: second term 0,
                    so A = r/n (plain REINFORCE, not zero on an all-equal group).
    bon_max_mean    A = r_max - mean(r) for the completion(s) with the maximal reward, 0 for the others.
    bon_max_second  A = r_max - (best reward strictly below r_max) for the maximal one(s); 0 if there is none.
    loo   [rlkit]   r~_i - (k/n) rho_{-i}(n-1,k), needs k <= n-1. The baseline is built from the other n-1
                    samples only (so it is unbiased) and is scaled by k/n, the scale of E[r~_i] = (k/n) max@k.
    none  [rlkit]   A = r~ (unbiased).

    Every baseline except `none` (and `loo1` with k=1) gives exactly 0 on a group whose rewards are all equal.

Off-policy (paper §3.3, eq. 10, Listing 3), samples from pi_old, delta_i = pi(y_i)/pi_old(y_i) - 1 (sequence
level, detached), clamped to [-clamp_delta, clamp_delta] [clamp_delta=0.2 is an rlkit choice; the paper does not
give its value], D_<i = sum_{l<i} delta_(l), first order in delta:

    g_(i) = (1/C(n,k)) sum_j w'_ij r_(j)
    w'_ii = C(i-1,k-1)(1 + delta_i) + C(i-2,k-2) D_<i
    w'_ij = C(j-2,k-2)(1 + delta_i + delta_j) + C(j-3,k-3)(D_<j - delta_i)        j > i
    = (1/C(n,k)) sum_{S∋i} (1 + sum_{j in S} delta_j) max_S r.    delta = 0: g = r~;  k = 1: g = (1+delta_i) r_i/n.

    Integration note (rlkit, not from the paper): g_i already contains the sample's own first-order ratio
    (1 + delta_i). Fed unchanged as the advantage of a ratio objective rho_i A_i that ratio counts twice; to get
    the paper's gradient use A_i = g_i / rho_i inside rho_i A_i surrogates, or the REINFORCE loss -sum g_i log pi.

Ties: groups are sorted stably (equal rewards keep their input order) and results are scattered back to the
input order. Every formula above is invariant to how ties are broken; tied rewards get the same r~ / A up to
float rounding. Binomial ratios C(a,b)/C(n,k) are computed exactly with Python integers and rounded once to
float64 (no overflow for large n); the arithmetic runs in float64 and the result has the rewards' dtype (at least
fp32). NaN rewards are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from rlkit import ops
from rlkit.functional.checks import check_grouped

MAX_AT_K_BASELINES = ("bon_mean", "loo1", "bon_max_mean", "bon_max_second", "loo", "none")


class _Groups(NamedTuple):
    """Rewards sorted by (group, reward), stable. All tensors are [N] in sorted order."""
    r: torch.Tensor  # [N] float64 sorted rewards
    order: torch.Tensor  # [N] long, input index of each sorted position
    slot: torch.Tensor  # [N] long, group slot (0..G-1)
    pos: torch.Tensor  # [N] long, 0-based rank within the group
    n: torch.Tensor  # [N] long, size of the group
    shape: tuple[int, int]  # (G, largest group size)


def _check_k(k: int, what: str = "max@k") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{what}: k={k!r} must be an integer >= 1")


def _sort_groups(rewards: torch.Tensor, group_ids: torch.Tensor, k: int, *, max_k_below_n: bool = False) -> _Groups:
    """Validate ``1 <= k <= n`` (``k <= n - 1`` if ``max_k_below_n``) for every group and sort within groups."""
    _check_k(k)
    r = check_grouped(rewards, group_ids, "max@k", allow_nan=False)  # [N] float64
    uniq = torch.unique(group_ids)  # [G]
    order, slot, pos, counts = ops.sort_within_groups(r, group_ids)  # [N], [N], [N], [G]
    limit = k + 1 if max_k_below_n else k
    bad = (counts < limit).nonzero().flatten().tolist()
    if bad:
        gid, size = int(uniq[bad[0]]), int(counts[bad[0]])
        if max_k_below_n:
            raise ValueError(f"max@k: baseline 'loo' needs k <= n - 1, but k={k} and group {gid}'s size is n={size}; "
                             f"use a smaller k or baseline 'loo1'")
        raise ValueError(f"max@k: k={k} is larger than group {gid}'s size n={size}; use k <= rollout.n")
    width = int(counts.max()) if counts.numel() else 0
    return _Groups(r[order], order, slot, pos, counts[slot], (uniq.numel(), width))


def _ratio(a: torch.Tensor, b: int, n: torch.Tensor, m: int) -> torch.Tensor:
    """C(a, b) / C(n, m) per element, [N] long -> [N] float64 (exact integers, rounded once); 0 if b < 0 or a < b."""
    if b < 0 or a.numel() == 0:
        return torch.zeros(a.shape, dtype=torch.float64, device=a.device)  # [N]
    pairs, inv = torch.unique(torch.stack([a, n]), dim=1, return_inverse=True)  # [2,P], [N]
    vals = [math.comb(x, b) / math.comb(y, m) if x >= b else 0.0 for x, y in pairs.T.tolist()]
    return torch.tensor(vals, dtype=torch.float64, device=a.device)[inv]  # [N]


def _dense(g: _Groups, x: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(g.shape)  # [G,W], zero padded
    out[g.slot, g.pos] = x
    return out  # [G,W]


def _before(g: _Groups, x: torch.Tensor) -> torch.Tensor:
    """Exclusive within-group prefix sum in sorted order: sum_{j<i} x_j -> [N]."""
    c = _dense(g, x).cumsum(1)  # [G,W]
    return torch.where(g.pos > 0, c[g.slot, (g.pos - 1).clamp(min=0)], 0.0)  # [N]


def _after(g: _Groups, x: torch.Tensor) -> torch.Tensor:
    """Exclusive within-group suffix sum in sorted order: sum_{j>i} x_j -> [N]."""
    c = _dense(g, x).flip(1).cumsum(1).flip(1)  # [G,W], c[:, p] = sum_{q>=p}
    return torch.where(g.pos + 1 < g.shape[1], c[g.slot, (g.pos + 1).clamp(max=g.shape[1] - 1)], 0.0)  # [N]


def _unsort(g: _Groups, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)  # [N]
    out[g.order] = x
    return out.to(torch.promote_types(like.dtype, torch.float32))  # [N]


def _tilde(g: _Groups, k: int) -> torch.Tensor:
    """Sorted r~_(i) = (1/C(n,k)) [C(i-1,k-1) r_(i) + sum_{j>i} C(j-2,k-2) r_(j)] -> [N] float64."""
    i = g.pos + 1  # [N] 1-based rank
    return _ratio(i - 1, k - 1, g.n, k) * g.r + _after(g, _ratio(i - 2, k - 2, g.n, k) * g.r)  # [N]


def max_at_k_rewards(rewards: torch.Tensor, group_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Transformed rewards r~ (module docstring), whose REINFORCE gradient is unbiased for grad max@k.

    Args:
        rewards: [N] float.  group_ids: [N] long, arbitrary ids, groups may differ in size.  k: 1 <= k <= n.

    Returns:
        [N] r~ in the input order (rewards' dtype, at least fp32).
    """
    g = _sort_groups(rewards, group_ids, k)
    return _unsort(g, _tilde(g, k), rewards)  # [N]


def max_at_k_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, k: int, *, baseline: str = "bon_mean",
                        eps: float = 1e-6) -> torch.Tensor:
    """max@k advantages, one scalar per completion (formulas in the module docstring).

    Args:
        rewards: [N] float.  group_ids: [N] long.  k: 1 <= k <= n (k <= n - 1 for "loo").
        baseline: one of ``MAX_AT_K_BASELINES``.  eps: added to the Bessel std of r~ ("bon_mean" only).

    Returns:
        [N] advantages in the input order (rewards' dtype, at least fp32).
    """
    if baseline not in MAX_AT_K_BASELINES:
        raise ValueError(f"max@k: baseline={baseline!r} is not valid; choose one of: "
                         f"{', '.join(map(repr, MAX_AT_K_BASELINES))}")
    g = _sort_groups(rewards, group_ids, k, max_k_below_n=baseline == "loo")
    i = g.pos + 1  # [N]
    dense = _dense(g, g.r)  # [G,W] sorted rewards per group
    low, top = dense[g.slot, torch.zeros_like(g.pos)], dense[g.slot, g.n - 1]  # [N], [N] group min and max
    if baseline in ("none", "bon_mean"):
        adv = _tilde(g, k)  # [N]
        if baseline == "bon_mean":
            mean, std, _ = ops.group_mean_std(adv, g.slot)  # [N], [N], Bessel std
            adv = (adv - mean) / (std + eps)  # [N]
    elif baseline == "loo1":  # (1/C(n,k)) [C(i-1,k-1) r_(i) - sum_{j<i} C(j-1,k-2) r_(j)]
        adv = _ratio(i - 1, k - 1, g.n, k) * g.r - _before(g, _ratio(i - 1, k - 2, g.n, k) * g.r)  # [N]
    elif baseline == "loo":  # r~_i - (k/n) rho_{-i}(n-1,k); ranks above i shift down by one without i
        rest = _before(g, _ratio(i - 1, k - 1, g.n - 1, k) * g.r) + _after(g, _ratio(i - 2, k - 1, g.n - 1, k) * g.r)
        adv = _tilde(g, k) - (k / g.n.to(torch.float64)) * rest  # [N]
    else:
        is_top = g.r == top  # [N] bool
        if baseline == "bon_max_mean":
            ref = ops.group_sum(g.r, g.slot)[0][g.slot] / g.n  # [N] group mean
        else:  # best reward strictly below the max, -inf if none
            below = torch.where(is_top, -math.inf, g.r)  # [N]
            ref = below.new_full((g.shape[0],), -math.inf).scatter_reduce(0, g.slot, below, "amax")[g.slot]  # [N]
        adv = torch.where(is_top & (ref > -math.inf), top - ref, 0.0)  # [N]
    if baseline != "none" and not (baseline == "loo1" and k == 1):
        adv = torch.where(low == top, 0.0, adv)  # [N], all rewards of the group equal -> exactly 0
    return _unsort(g, adv, rewards)  # [N]


def max_at_k_offpolicy_rewards(rewards: torch.Tensor, group_ids: torch.Tensor, k: int, delta: torch.Tensor, *,
                               clamp_delta: float | None = 0.2) -> torch.Tensor:
    """First-order off-policy transformed rewards g (module docstring; paper eq. 10, Listing 3).

    Args:
        rewards: [N].  group_ids: [N] long.  k: 1 <= k <= n.
        delta: [N] per-sequence ratio pi/pi_old - 1 (detached here).
        clamp_delta: delta is clamped to [-clamp_delta, clamp_delta] first; None = no clamping.

    Returns:
        [N] g in the input order (rewards' dtype, at least fp32).
    """
    if delta.shape != rewards.shape:
        raise ValueError(f"max@k: delta {tuple(delta.shape)} must have the rewards' shape {tuple(rewards.shape)}")
    if clamp_delta is not None and not clamp_delta >= 0:
        raise ValueError(f"max@k: clamp_delta={clamp_delta!r} must be >= 0 or None")
    g = _sort_groups(rewards, group_ids, k)
    d = delta.detach().to(torch.float64)[g.order]  # [N] sorted
    if clamp_delta is not None:
        d = d.clamp(-clamp_delta, clamp_delta)  # [N]
    i = g.pos + 1  # [N]
    d_below = _before(g, d)  # [N] D_<i
    a = _ratio(i - 2, k - 2, g.n, k)  # [N] C(i-2,k-2)/C(n,k), also C(j-2,k-2)/C(n,k) at j
    b = _ratio(i - 3, k - 3, g.n, k)  # [N] C(j-3,k-3)/C(n,k) at j
    own = (_ratio(i - 1, k - 1, g.n, k) * (1 + d) + a * d_below) * g.r  # [N] w'_ii r_(i)
    later = (_after(g, (a * (1 + d) + b * d_below) * g.r)
             + d * (_after(g, a * g.r) - _after(g, b * g.r)))  # [N] sum_{j>i} w'_ij r_(j)
    return _unsort(g, own + later, rewards)  # [N]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c,k)/C(n,k) from c correct of n samples (Chen et al. 2021, arXiv 2107.03374).

    Product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), stable for large n.
    """
    _check_k(k, "pass@k")
    if not (isinstance(n, int) and isinstance(c, int) and 0 <= c <= n and k <= n):
        raise ValueError(f"pass@k: need integers 0 <= c <= n and 1 <= k <= n; got n={n!r}, c={c!r}, k={k!r}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def max_at_k_estimate(rewards: torch.Tensor | Sequence[float], k: int) -> float:
    """Unbiased max@k estimate rho(n,k) = (1/C(n,k)) sum_{i>=k} C(i-1,k-1) r_(i) from one prompt's n rewards."""
    _check_k(k)
    r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu()  # [n]
    if r.dim() != 1 or torch.isnan(r).any():
        raise ValueError(f"max@k: rewards must be a 1-D sequence without NaN; got shape {tuple(r.shape)}")
    n = r.numel()
    if k > n:
        raise ValueError(f"max@k: k={k} is larger than the number of rewards n={n}; use k <= n")
    top = sorted(r.tolist())
    total = math.comb(n, k)
    return math.fsum(math.comb(i - 1, k - 1) / total * top[i - 1] for i in range(k, n + 1))
