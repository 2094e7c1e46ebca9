r"""GRPO advantage (Shao et al., DeepSeekMath, arXiv 2402.03300), per group g with valid rewards r:

    scale="group":  A_i = (r_i - mu_g) / (sigma_g + eps)        sigma_g = Bessel std of the group
    scale="batch":  A_i = (r_i - mu_g) / (sigma_batch + eps)    sigma_batch = Bessel std of all valid rewards
    scale="none":   A_i =  r_i - mu_g                            (Dr. GRPO, Liu et al., arXiv 2503.20783)

    NaN reward (unscorable): left out of mu and sigma, A = 0. A group whose valid rewards are all equal gets
    exactly A = 0. Single valid member: singleton="zero" -> A = 0 (TRL); singleton="raw" -> verl's
    convention mu = 0, sigma = 1, i.e. A = r / (1 + eps) for scale group/batch and A = r for scale none.

Reinforce-Ada's pool baseline (``pool_baseline_advantages``) is GRPO with the baseline measured by the sampler over
everything generated for the prompt.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlkit import ops
from rlkit.functional.checks import check_choice

GRPO_SCALES = ("group", "batch", "none")
GRPO_SINGLETONS = ("zero", "raw")


def check_grpo_args(scale: str, eps: float, singleton: str) -> None:
    """Validate the options of ``grpo_advantages``."""
    check_choice("scale", scale, GRPO_SCALES)
    check_choice("singleton", singleton, GRPO_SINGLETONS)
    if not eps >= 0:
        raise ValueError(f"eps={eps!r} must be >= 0")



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
