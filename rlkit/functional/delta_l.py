r"""ΔL normalization: the minimum-variance unbiased loss aggregation (He, Luo, Zhang, Yang, Qiu, arXiv 2509.07558;
v2 "VL Norm"; ALGORITHMS.md §4). Official code: zerolllin/Delta-L-Normalization.

A sample's gradient g_i = Σ_t A_i ∇log π(o_{i,t}) has variance ≈ V·L_i. Among aggregations Σ_i x_i g_i with the
Dr. GRPO scale Σ_i x_i = 1/M, the variance is minimal for x_i ∝ 1/L_i; α ∈ [0, 1] interpolates:

    loss = (1/M) Σ_i w_i S_i,     w_i = L_i^{-α} / Σ_j L_j^{-α},     S_i = Σ_t mask·ℓ,    M = max_len (constant)

    α = 0: w_i = 1/N -> Σ_i S_i / (N·M) = Dr. GRPO;    equal lengths: also Dr. GRPO for any α
    α = 1: minimum variance; with binary GRPO advantages and ratio 1 the loss *value* is exactly 0
           (w_i L_i is constant and Σ_i A_i = 0) while its gradient is not.

As an aggregation plan: coef_i = L_i^{-α} / Σ_j L_j^{-α}, Z = M. ``normalize``:

* "batch" (default): Σ_j over the whole global batch of the optimizer step -- what the authors' released code
  does (it rescales each advantage by x_i / mean(x) over the batch, then divides by B·M);
* "group": Σ_j over the sample's own group, then averaged over groups (Z = M · #groups) -- the paper's
  derivation, which is per question. The two differ when groups have different length profiles.

rlkit choices: L_i counts the *trained* tokens of row i (token weight > 0), so tokens dropped by a selection
plug-in leave the lengths too; a row with no trained token (empty response, or fully dropped) has coefficient 0
and is left out of the Σ_j (the reference divides by zero there); otherwise L_i is clamped at 1 before the power.
"""

from __future__ import annotations

import torch

from rlkit import ops

DELTA_L_NORMALIZE = ("batch", "group")


def plan_delta_l(lengths: torch.Tensor, *, max_len: int | None = None, alpha: float = 0.75,
                 normalize: str = "batch", group_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """ΔL plan: (coef[N], Z) with coef_i = L_i^-α / Σ_j L_j^-α (over the batch or the group) and Z = M (· #groups)."""
    if max_len is None or max_len <= 0:
        raise ValueError(f"aggregation 'delta_l' needs max_len > 0 (the constant length normaliser M, the run's "
                         f"rollout.max_new_tokens); got max_len={max_len!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"delta_l alpha={alpha} must be in [0, 1] (0 = Dr. GRPO, 1 = minimum variance; "
                         "the paper's default is 0.75)")
    if normalize not in DELTA_L_NORMALIZE:
        raise ValueError(f"delta_l normalize='{normalize}' must be one of {', '.join(DELTA_L_NORMALIZE)}")
    used = lengths > 0                                                                     # [N] bool
    x = torch.where(used, lengths.double().clamp(min=1) ** -alpha, 0.0)                   # [N] L^-α
    if normalize == "batch" or group_ids is None:
        if normalize == "group":
            raise ValueError("delta_l normalize='group' needs group_ids")
        total = x.sum()
        coef = x / total if total > 0 else x                                               # [N]
        return coef.float(), float(max_len)
    per_group, _, index = ops.group_sum(x, group_ids)                                      # [G], _, [N]
    coef = torch.where(used, x / per_group[index].clamp(min=1e-300), 0.0)                  # [N]
    groups = int((per_group > 0).sum())
    return coef.float(), float(max_len * max(groups, 1))
