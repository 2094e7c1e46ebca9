r"""PPO clipped surrogate (Schulman et al., arXiv 1707.06347), per token, rho = exp(clamp(logp - logp_old, -20, 20)):

    l = max(-rho * A, -clip(rho, 1 - eps_low, 1 + eps_high) * A)      (eps_low != eps_high: DAPO clip-higher)
    dual clip (verl, c > 1, tokens with A < 0 only):  l = min(l, -c * A)
"""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.functional.checks import LOG_RATIO_CLAMP


def check_clip_args(eps_low: float, eps_high: float, dual_clip: float | None) -> None:
    """Validate the options of ``ppo_clip_loss``."""
    if not 0 <= eps_low < 1:
        raise ValueError(f"eps_low={eps_low!r} must be in [0, 1)")
    if not eps_high >= 0:
        raise ValueError(f"eps_high={eps_high!r} must be >= 0")
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip={dual_clip!r} must be None or > 1")


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
