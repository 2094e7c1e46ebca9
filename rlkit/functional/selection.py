r"""D³S: dynamic dual-level down-sampling of a rolled-out batch (sample level, then token level).

Paper: Wang et al., "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
Optimization", arXiv 2509.22115 (ICLR 2026). Spec: ALGORITHMS.md §5. Tags: [V2] = stated by the secondary
transcriptions of the paper's §3 (the PDF itself was not read); [rlkit] = our own decision.

Advantages A are computed on the FULL groups first and are neither recomputed nor re-normalised after selection [V2].

    sample level  keep S^ = argmax_{|S| = m} Var(A_S)                                                     [V2]
                  mode="cross" (full D³S): S ranges over the whole batch, m = samples kept in the batch;
                  mode="intra" (D³S-I):    S ranges over one group,      m = samples kept per group.
    token level   s[i,t] = |A[i,t]| * H[i,t]  (H = entropy over the full vocabulary; outcome A[i,t] = A_i);
                  keep the top K% of the valid tokens by s, ONE ranking over the whole batch          [V2]
    schedule      [m(p), K(p)] = (1 - p) [m_init, K_init] + p [m_final, K_final],  p in [0, 1]          [V2]
                  cosine: end + (start - end) * (1 + cos(pi p)) / 2  -- opt-in extension, NOT in the paper [rlkit]

Exact sample-level algorithm [rlkit; the notes' "N_pos largest + N_neg most negative" is this family]: a fixed-size
max-variance subset always consists of the j largest and m - j smallest values for some j. Per group (the batch in
cross mode) sort descending by A, equal values in index order (stable), so the "bottom" picks are the LAST entries
of that order; evaluate the m + 1 candidates top-j ∪ bottom-(m - j) with prefix sums of x and x² (O(n log n));
keep the best. Ties: variances are computed in float64 on the advantages centred on the group mean and divided by
the largest |deviation| (so the pick is shift/scale invariant); candidates within 1e-12 * (1 + best) of the best
variance count as equal, and the smallest such j wins (float noise cannot flip an exact tie).
Rules [rlkit]: keep >= 2 (one sample has variance 0); a group with n <= m keeps all; a group (the batch in cross
mode) whose advantages are all exactly equal keeps its FIRST m members in index order; NaN advantages are an error.
Cross mode uses one count for the whole batch and a single stage (no intra pass first; split N_pos/N_neg optimised).

Token level [rlkit choices]: k = ceil(ratio * n_tokens) (1e-12 relative slack: 0.28 * 25 = 7.000000000000001 keeps 7).
Rows whose advantage is 0 on all their valid tokens keep their mask unchanged (they carry no gradient) and are left
out of the ranking: n_tokens counts the valid tokens of the other rows only. Equal scores: the earlier flat
(row-major) index wins. Zero-length rows stay empty; ratio = 1 returns the mask unchanged; output ⊆ mask.
"""

from __future__ import annotations

import math

import torch

from rlkit import ops
from rlkit.functional.checks import check_choice, check_grouped

D3S_MODES = ("cross", "intra")
TIE_TOL = 1e-12  # candidate variances (of deviations scaled to [-1, 1]) this close to the best count as equal
COUNT_SLACK = 1e-12  # relative slack of ceil(ratio * n) against float noise
PROGRESS_SLACK = 1e-9  # progress this far outside [0, 1] is clamped, not rejected


def _check_ratio(ratio: float, name: str = "ratio") -> float:
    if not 0 < ratio <= 1:
        raise ValueError(f"{name}={ratio!r} must be in (0, 1] (the fraction kept; 1 keeps everything)")
    return float(ratio)


def _ceil_count(ratio: float, n: int) -> int:
    """ceil(ratio * n), robust to float noise, capped at n."""
    return min(n, math.ceil(ratio * n * (1.0 - COUNT_SLACK)))


def d3s_keep_count(ratio: float, n: int) -> int:
    """Number of samples a ratio keeps out of n: min(n, max(2, ceil(ratio * n))).

    At least 2 because a single sample has variance 0; n < 2 returns n (keep everything, skip the selection).
    """
    _check_ratio(ratio)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be an integer >= 0 (the number of samples)")
    return min(n, max(2, _ceil_count(ratio, n)))


def d3s_select_samples(advantages: torch.Tensor, group_ids: torch.Tensor, keep: int, *,
                       mode: str = "cross") -> torch.Tensor:
    """Max-variance sample selection (module docstring).

    Args:
        advantages: [N] float, one scalar per completion (no NaN).
        group_ids: [N] long, arbitrary ids, groups may differ in size (used by mode="intra" only).
        keep: int >= 2, samples kept in the whole batch (mode="cross") or per group (mode="intra").
        mode: "cross" (D³S) | "intra" (D³S-I).

    Returns:
        [N] bool, True = kept.
    """
    check_choice("mode", mode, D3S_MODES)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise ValueError(f"keep={keep!r}: the variance of one sample is 0; use keep >= 2 (an integer)")
    x = check_grouped(advantages, group_ids, "d3s_select_samples", name="advantages", allow_nan=False)  # [N]
    ids = group_ids if mode == "intra" else torch.zeros_like(group_ids)  # [N]
    if x.numel() == 0:
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)  # [N]
    order, slot, pos, counts = ops.sort_within_groups(x, ids, descending=True)  # by group, A descending, index
    if keep >= int(counts.max()):
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)  # [N]
    m, G, W = keep, counts.numel(), int(counts.max())  # m < W
    dense = x.new_zeros(G, W)  # [G,W], sorted, zero padded
    dense[slot, pos] = x[order]
    n = counts[:, None]  # [G,1]
    valid = torch.arange(W, device=x.device)[None, :] < n  # [G,W]
    dev = torch.where(valid, dense - dense.sum(1, keepdim=True) / n, 0.0)  # [G,W]
    scale = dev.abs().amax(1, keepdim=True)  # [G,1]
    z = dev / torch.where(scale > 0, scale, 1.0)  # [G,W], in [-1, 1]
    zero = z.new_zeros(G, 1)  # [G,1]
    p1 = torch.cat([zero, z.cumsum(1)], 1)  # [G,W+1], p1[:, k] = sum of the first k
    p2 = torch.cat([zero, (z * z).cumsum(1)], 1)  # [G,W+1]
    j = torch.arange(m + 1, device=x.device)  # [m+1], top-j count
    cut = (n - (m - j)[None, :]).clamp(min=0)  # [G,m+1], first bottom position (> j when n > m)
    s1 = p1[:, j] + p1.gather(1, n) - p1.gather(1, cut)  # [G,m+1]
    s2 = p2[:, j] + p2.gather(1, n) - p2.gather(1, cut)  # [G,m+1]
    var = s2 / m - (s1 / m) ** 2  # [G,m+1]
    best = var.amax(1, keepdim=True)  # [G,1]
    top = (var >= best - TIE_TOL * (1.0 + best.abs())).long().argmax(1)  # [G], smallest tied j
    constant = dense[:, 0] == dense.gather(1, n - 1).squeeze(1)  # [G] bool, all advantages equal
    top = torch.where(constant, m, top)[slot]  # [N], all equal -> first m in index order
    n_row = counts[slot]  # [N]
    kept = (n_row <= m) | (pos < top) | (pos >= n_row - (m - top))  # [N] bool, sorted order
    out = torch.empty_like(kept)  # [N]
    out[order] = kept
    return out  # [N]


def d3s_select_tokens(advantages: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                      ratio: float) -> torch.Tensor:
    """Keep the top ceil(ratio * n_tokens) valid tokens by |A| * H, one ranking over the batch (module docstring).

    Args:
        advantages: [N] (broadcast over T) or [N,T].  entropy: [N,T] token entropies (no NaN on ranked tokens).
        mask: [N,T] bool (non-bool: entries != 0 count).  ratio: K in (0, 1].

    Returns:
        [N,T] bool, a subset of ``mask``.
    """
    _check_ratio(ratio)
    mask = mask if mask.dtype == torch.bool else mask != 0  # [N,T] bool
    N, T = mask.shape
    if entropy.shape != mask.shape or advantages.shape not in ((N,), (N, T)):
        raise ValueError(f"d3s_select_tokens: need entropy [N,T] = mask {tuple(mask.shape)} and advantages [N] "
                         f"or [N,T]; got entropy {tuple(entropy.shape)}, advantages {tuple(advantages.shape)}")
    if ratio == 1:
        return mask.clone()  # [N,T]
    adv = (advantages[:, None] if advantages.dim() == 1 else advantages).expand(N, T)  # [N,T]
    live = (mask & (adv != 0)).any(1)  # [N] bool, rows with a non-zero advantage
    rank = mask & live[:, None]  # [N,T] bool, tokens that compete
    score = adv.detach().double().abs() * entropy.detach().double()  # [N,T]
    if torch.isnan(score[rank]).any():
        raise ValueError("d3s_select_tokens: NaN advantage or entropy on a valid token; fix the inputs")
    k = _ceil_count(ratio, int(rank.sum()))
    flat = torch.where(rank, score, float("-inf")).flatten()  # [N*T]
    chosen = torch.zeros(N * T, dtype=torch.bool, device=mask.device)  # [N*T]
    chosen[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return (mask & ~live[:, None]) | (chosen.view(N, T) & rank)  # [N,T]


def _check_progress(progress: float) -> float:
    p = float(progress)
    if not -PROGRESS_SLACK <= p <= 1 + PROGRESS_SLACK:
        raise ValueError(f"progress={progress!r} must be in [0, 1] (e.g. min(step / total_steps, 1))")
    return min(max(p, 0.0), 1.0)


def linear_schedule(start: float, end: float, progress: float) -> float:
    """(1 - p) * start + p * end: the paper's schedule [V2]. ``progress`` in [0, 1]."""
    p = _check_progress(progress)
    return (1.0 - p) * start + p * end


def cosine_schedule(start: float, end: float, progress: float) -> float:
    """end + (start - end) * (1 + cos(pi p)) / 2: rlkit opt-in extension (not in the paper)."""
    p = _check_progress(progress)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
