r"""Reinforce-Ada adaptive sampling: keep sampling a prompt in rounds until its pool can fill a useful group.

Paper: Xiong et al., "Reinforce-Ada: An Adaptive Sampling Framework for Reinforce-Style LLM Training",
arXiv 2510.04996; reference code RLHFlow/Reinforce-Ada. Spec: ALGORITHMS.md §7.

One training iteration, per prompt: for round 1..N_r generate M >= n responses, append them to the prompt's pool
(positive iff reward > tau, default tau = 0.7), and only after the whole round is absorbed test the exit rule
(``reinforce_ada_exit``); a prompt that exits is not sampled again. Then the update group is built from the pool
(``reinforce_ada_select``) and advantages use the pool's global statistics (``reinforce_ada_advantages``).

Exit rules (#pos, #neg counted over the whole pool, h = floor(n/2)):

    balanced           #pos >= h  and  #neg >= n - h
    positive_focused   #pos >= 1

Group selection, take = min(n, |pool|) responses, always in generation order within each kind:

    targets   finished prompt, or rule "balanced":   pos_target = h,  neg_target = n - pos_target
              unfinished prompt, rule "positive_focused" (fallback after N_r rounds):
                  pos_target = clip(ceil(#pos / |pool| * n), 1, take - 1),  neg_target = take - pos_target
              (np.clip semantics: the upper bound wins, so take = 1 gives pos_target = 0)
    kept      min(pos_target, #pos) first positives and min(neg_target, #neg) first negatives; if that is short of
              take, top up with the next unused positives first, then the next unused negatives.

    So the group always has exactly take = min(n, |pool|) members: a pool smaller than n is kept whole, and a pool
    with too few of one kind is filled from the other kind (e.g. an all-positive pool gives n positives).
    ``finished`` only changes the targets for rule "positive_focused"; for "balanced" both branches are identical.
    An unfinished "positive_focused" prompt has #pos = 0, so its group is the first take negatives.

Advantage with global statistics (global_stat_est=True), pool reconstructed as #pos ones and #neg zeros,
L = #pos + #neg:

    mu    = #pos / L
    sigma = max(std_Bessel, eps),   std_Bessel = sqrt(#pos * #neg / (L (L - 1)))
    A_i   = r_i - mu                         (norm_by_std=False; the released script and paper §2.3)
    A_i   = (r_i - mu) / (sigma + eps)       (norm_by_std=True)
    L <= 1: mu = 0, sigma = 1.

    The numerator uses the actual reward r_i while mu/sigma use binarised counts (differs from the mean of r for
    non-binary rewards; spec open question, kept as in the reference). eps = 1e-6 [rlkit choice, same as GRPO].
"""

from __future__ import annotations

import math

import torch

REINFORCE_ADA_RULES = ("balanced", "positive_focused")


def _check_rule(rule: str) -> None:
    if rule not in REINFORCE_ADA_RULES:
        raise ValueError(f"reinforce_ada: rule={rule!r} is not valid; choose one of: "
                         f"{', '.join(map(repr, REINFORCE_ADA_RULES))}")


def _check_count(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"reinforce_ada: {name}={value!r} must be an integer >= {minimum}")


def reinforce_ada_exit(num_pos: int, num_neg: int, n: int, rule: str) -> bool:
    """Whether a prompt stops sampling after a round, given its pool counts (module docstring).

    Args:
        num_pos: #responses with reward > tau in the pool.  num_neg: the others.  n: effective group size >= 1.
        rule: "balanced" or "positive_focused".
    """
    _check_rule(rule)
    _check_count(num_pos, "num_pos", 0)
    _check_count(num_neg, "num_neg", 0)
    _check_count(n, "n (effective group size)", 1)
    if rule == "positive_focused":
        return num_pos >= 1
    half = n // 2
    return num_pos >= half and num_neg >= n - half


def _check_rewards(rewards: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(rewards).detach()
    if r.dim() != 1:
        raise ValueError(f"reinforce_ada: rewards {tuple(r.shape)} must be 1-D (one prompt's pool in generation order)")
    if r.is_floating_point() and torch.isnan(r).any():
        raise ValueError("reinforce_ada: rewards contain NaN; score or drop those responses first")
    return r  # [L]


def reinforce_ada_select(rewards: torch.Tensor, n: int, *, threshold: float = 0.7, rule: str = "balanced",
                         finished: bool = True) -> torch.Tensor:
    """Indices of the responses kept from one prompt's pool for the update group (module docstring).

    Args:
        rewards: [L] rewards of the pool in generation order (all rounds concatenated).
        n: effective group size >= 1.  threshold: tau, positive iff reward > tau (0.7).
        rule: "balanced" or "positive_focused".  finished: whether the prompt met its exit rule within N_r rounds.

    Returns:
        [min(n, L)] long, sorted ascending (generation order).
    """
    _check_rule(rule)
    _check_count(n, "n (effective group size)", 1)
    r = _check_rewards(rewards)  # [L]
    is_pos = r > threshold  # [L] bool
    pos_idx, neg_idx = is_pos.nonzero().flatten(), (~is_pos).nonzero().flatten()  # [#pos], [#neg]
    num_pos, num_neg, size = pos_idx.numel(), neg_idx.numel(), r.numel()
    take = min(n, size)
    if finished or rule == "balanced":
        pos_target = n // 2
        neg_target = n - pos_target
    else:  # positive_focused fallback, np.clip(x, 1, take - 1): upper bound wins
        pos_target = min(max(math.ceil(num_pos / size * n) if size else 0, 1), take - 1)
        neg_target = take - pos_target
    pos_take = min(pos_target, num_pos)
    neg_take = min(neg_target, num_neg)
    short = take - pos_take - neg_take
    extra = min(short, num_pos - pos_take)
    pos_take, short = pos_take + extra, short - extra
    neg_take += min(short, num_neg - neg_take)
    kept = torch.cat([pos_idx[:pos_take], neg_idx[:neg_take]])  # [take]
    return torch.sort(kept).values  # [take], generation order


def reinforce_ada_pool_stats(num_pos: int, num_neg: int, *, eps: float = 1e-6) -> tuple[float, float]:
    """(mu, sigma) of a pool reconstructed as #pos ones and #neg zeros (module docstring, step 4).

    mu = #pos / L and sigma = max(std_Bessel, eps) for L = #pos + #neg >= 2; (0, 1) for L <= 1.
    """
    _check_count(num_pos, "num_pos", 0)
    _check_count(num_neg, "num_neg", 0)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"reinforce_ada: eps={eps!r} must be a finite number > 0 (default 1e-6)")
    size = num_pos + num_neg
    if size <= 1:
        return 0.0, 1.0
    return num_pos / size, max(math.sqrt(num_pos * num_neg / (size * (size - 1))), eps)


def reinforce_ada_advantages(rewards: torch.Tensor, num_pos: int, num_neg: int, *, norm_by_std: bool = False,
                             eps: float = 1e-6) -> torch.Tensor:
    """Advantages of one prompt's kept group with the pool's global statistics (module docstring, step 4).

    Args:
        rewards: [k] rewards of the kept responses.  num_pos / num_neg: counts over the whole pool (reward > tau).
        norm_by_std: divide by (sigma + eps) (off in the released script).  eps: std floor and offset (1e-6).

    Returns:
        [k] advantages (rewards' dtype, at least fp32).
    """
    _check_count(num_pos, "num_pos", 0)
    _check_count(num_neg, "num_neg", 0)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"reinforce_ada: eps={eps!r} must be a finite number > 0 (default 1e-6)")
    r = _check_rewards(rewards)  # [k]
    if r.numel() > num_pos + num_neg:
        raise ValueError(f"reinforce_ada: {r.numel()} kept rewards but the pool has only num_pos + num_neg = "
                         f"{num_pos + num_neg}; pass the counts of the whole pool")
    mu, sigma = reinforce_ada_pool_stats(num_pos, num_neg, eps=eps)
    adv = r.to(torch.float64) - mu  # [k]
    if norm_by_std:
        adv = adv / (sigma + eps)
    return adv.to(torch.promote_types(r.dtype, torch.float32))  # [k]
