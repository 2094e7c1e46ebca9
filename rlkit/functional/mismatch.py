"""Train-inference mismatch weights: TIS (token level) and MIS (sequence level), see ``mismatch_weights``."""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.functional.checks import LOG_RATIO_CLAMP


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

