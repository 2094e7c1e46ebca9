r"""GVM-RAFT dynamic sample allocation: give each prompt a share of a sampling budget that minimises gradient variance.

Paper: Yao et al., "Optimizing Chain-of-Thought Reasoners via Gradient Variance Minimization in Rejection Sampling
and RL" (GVM-RAFT), arXiv 2505.02391; reference code RLHFlow/GVM. Spec: ALGORITHMS.md §6.

Per prompt i (from a stage-1 probe with the current checkpoint), p_i = acceptance rate (fraction of probe samples
with score > correct_threshold), G_i = mean gradient norm over the accepted probe samples. Minimising
sum_i G_i^2 / (n_i p_i) under sum_i n_i = N gives n_i ∝ G_i / sqrt(p_i); the code adds a regulariser so that
prompts with tiny p_i do not absorb the budget:

    w_i     = G_i / sqrt(p_i + alpha / p_i^(beta - 1))        w_i = 0 if G_i = 0 or p_i = 0
    ratio_i = w_i / sum_j w_j
    n_i     = float_to_int_preserve_sum(ratio, N)

    beta = 2: denominator sqrt(p + alpha/p), minimal at p = sqrt(alpha), symmetric in p <-> alpha/p.

Integer rounding (the reference ``float_to_int_preserve_sum``): s_i = ratio_i * N, n_i = round_half_even(s_i),
error = N - sum_i n_i; if error > 0, add 1 to the `error` entries with the largest residual s_i - n_i; if error < 0,
subtract 1 from the `|error|` entries with the most negative residual. The result sums exactly to N.

rlkit choices:
    * Ties between equal residuals go to the lower index (stable sort; numpy's default argsort is not stable).
    * Prompts with w_i = 0 are never chosen by the correction step (a float-noise guard; with exact arithmetic the
      residual argument already excludes them), so p_i = 0 or G_i = 0 always gets 0 samples.
    * All w_i = 0 (the reference divides by zero): uniform fallback, n_i = N // P for every prompt and the remainder
      N % P goes +1 to the first N % P prompts in index order.
    * Arithmetic in float64. The optional filters of the reference (filter_threshold, filter_insufficient, both off
      in the released scripts) are not applied here; zero the grad norm of a prompt to drop it.
"""

from __future__ import annotations

import math

import torch


def _round_preserve_sum(ratio: torch.Tensor, budget: int, eligible: torch.Tensor) -> torch.Tensor:
    """Reference ``float_to_int_preserve_sum`` on [P] float64 ratios (summing to ~1) -> [P] long summing to budget."""
    scaled = ratio * budget  # [P]
    counts = torch.round(scaled)  # [P], half to even like np.round
    error = budget - int(counts.sum().item())
    if error != 0:
        residual = scaled - counts  # [P]
        key = -residual if error > 0 else residual  # ascending key = most wanted first
        key = torch.where(eligible, key, math.inf)  # never touch zero-weight prompts
        idx = torch.sort(key, stable=True).indices[: abs(error)]  # [|error|]
        counts[idx] += 1 if error > 0 else -1
    return counts.to(torch.long)  # [P]


def gvm_allocation(accept_rates: torch.Tensor, grad_norms: torch.Tensor, budget: int, *, alpha: float = 1e-3,
                   beta: float = 2.0) -> torch.Tensor:
    """Number of samples per prompt, n_i ∝ G_i / sqrt(p_i + alpha / p_i^(beta-1)) (module docstring).

    Args:
        accept_rates: [P] acceptance rates p_i in [0, 1].  grad_norms: [P] mean gradient norms G_i >= 0.
        budget: total number of samples N >= 0.  alpha: regulariser >= 0 (1e-3).  beta: exponent (2.0).

    Returns:
        [P] long, n_i >= 0, summing exactly to ``budget``.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"gvm: budget={budget!r} must be an integer >= 0 (total samples, e.g. #prompts * 8)")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"gvm: alpha={alpha!r} must be a finite number >= 0 (default 1e-3)")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta)):
        raise ValueError(f"gvm: beta={beta!r} must be a finite number (default 2.0)")
    p = torch.as_tensor(accept_rates).detach().to(torch.float64)  # [P]
    g = torch.as_tensor(grad_norms).detach().to(torch.float64)  # [P]
    if p.dim() != 1 or g.shape != p.shape:
        raise ValueError(f"gvm: accept_rates {tuple(p.shape)} and grad_norms {tuple(g.shape)} must be 1-D of the "
                         f"same length (one entry per prompt)")
    if p.numel() == 0:
        if budget > 0:
            raise ValueError(f"gvm: budget={budget} cannot be allocated to 0 prompts; pass at least one prompt")
        return torch.zeros(0, dtype=torch.long)
    if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        bad = p[~(torch.isfinite(p) & (p >= 0) & (p <= 1))][0].item()
        raise ValueError(f"gvm: accept_rates must lie in [0, 1], got {bad}; pass the fraction of accepted probe samples")
    if not torch.isfinite(g).all() or (g < 0).any():
        bad = g[~(torch.isfinite(g) & (g >= 0))][0].item()
        raise ValueError(f"gvm: grad_norms must be finite and >= 0, got {bad}; pass gradient norms (0 drops a prompt)")
    live = (p > 0) & (g > 0)  # [P]
    ps = torch.where(live, p, 1.0)  # [P], safe denominator
    w = torch.where(live, g / torch.sqrt(ps + alpha / ps ** (beta - 1)), 0.0)  # [P]
    total = w.sum()
    if not live.any() or not torch.isfinite(total) or total <= 0:  # all ratios zero -> uniform fallback
        num = p.numel()
        out = torch.full((num,), budget // num, dtype=torch.long)  # [P]
        out[: budget % num] += 1
        return out
    return _round_preserve_sum(w / total, budget, w > 0)  # [P]
