"""Policy losses beyond the clipped PPO surrogate: CISPO and GSPO, per token, never reduced.

Notation: ``r_t = exp(logprobs_t - old_logprobs_t)`` (log-ratio clamped to [-20, 20] as in ``ppo_clip_loss``),
``A`` the advantage ([N] broadcast over T, or [N, T]), ``mask`` the trained (model) tokens, sg = stop-gradient.

CISPO (MiniMax-M1, arXiv 2506.13585)::

    loss_t = - sg[clip(r_t, 1 - eps_low, 1 + eps_high)] * A * logprobs_t        (eps_low None: no lower bound)

GSPO (Zheng et al., arXiv 2507.18071), with ``s_i = exp(mean_{t in mask_i} (logprobs_t - old_logprobs_t))``::

    sequence level:  loss_t = max(-A * s_i, -A * clip(s_i, 1 - eps_low, 1 + eps_high))   (grad through s_i)
    token level:     s_it = sg[s_i] * exp(logprobs_t - sg[logprobs_t])  in place of s_i  (GSPO-token, verl)

Both levels have the same value; with a sequence-level advantage they have the same gradient too,
``-A s_i / |y_i| * sum_t grad logprobs_t`` per sequence under ``seq_mean_token_mean``; GSPO-token differs only when
A varies per token. The log of the token-level ratio is clamped at 10 as verl does.
"""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.functional.checks import LOG_RATIO_CLAMP
from rlkit.functional.ppo import ppo_clip_loss


def _ratio_metrics(ratio: torch.Tensor, log_ratio: torch.Tensor, clipped: torch.Tensor,
                   mask: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"clip_frac": ops.masked_mean(clipped.float(), mask),
                "ratio_mean": ops.masked_mean(ratio, mask),
                "approx_kl": ops.masked_mean(ratio - 1.0 - log_ratio, mask)}


def cispo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
               *, eps_low: float | None = None,
               eps_high: float = 4.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token CISPO loss [N,T] (0 where mask is False) and metrics: "clip_frac" (the weight was clipped),
    "ratio_mean", "approx_kl" (k3 estimate of KL(pi_old || pi)), masked token means.

    Args:
        logprobs: [N,T] with grad.  old_logprobs: [N,T].  advantages: [N] or [N,T].  mask: [N,T] bool.
    """
    if not eps_high > 0 or (eps_low is not None and not 0 < eps_low <= 1):
        raise ValueError(f"cispo needs eps_high > 0 and eps_low null or in (0, 1]; got eps_low={eps_low!r}, "
                         f"eps_high={eps_high!r}")
    adv = advantages[:, None] if advantages.dim() == 1 else advantages                   # [N,1] or [N,T]
    mask = mask if mask.dtype == torch.bool else mask != 0                               # [N,T]
    log_ratio = (logprobs - old_logprobs).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N,T]
    ratio = torch.exp(log_ratio)                                                         # [N,T]
    low = 0.0 if eps_low is None else 1.0 - eps_low
    weight = ratio.clamp(min=low, max=1.0 + eps_high)                                    # [N,T], no grad
    loss = torch.where(mask, -weight * adv * logprobs, 0.0)                              # [N,T]
    clipped = (ratio > 1.0 + eps_high) | (ratio < low)                                   # [N,T] bool
    return loss, _ratio_metrics(ratio, log_ratio, clipped, mask)


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_{t in mask_i} (logprobs - old_logprobs)`` [N] (0 for a row without masked tokens), with grad."""
    m = mask.to(logprobs.dtype)                                                           # [N,T]
    return ((logprobs - old_logprobs) * m).sum(-1) / m.sum(-1).clamp(min=1.0)             # [N]


def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              *, eps_low: float = 3e-4, eps_high: float = 4e-4,
              level: str = "sequence") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token GSPO loss [N,T] (0 where mask is False) and metrics: "clip_frac" (the clipped branch is active),
    "seq_ratio_mean" (s_i over tokens), "ratio_mean" and "approx_kl" of the per-token ratios, masked token means.

    Args:
        logprobs: [N,T] with grad.  old_logprobs: [N,T].  advantages: [N] or [N,T].  mask: [N,T] bool: the tokens
            the sequence ratio averages over.  level: "sequence" | "token".
    """
    if not (0 < eps_low < 1 and eps_high > 0):
        raise ValueError(f"gspo needs 0 < eps_low < 1 and eps_high > 0; got {eps_low!r}, {eps_high!r}")
    if level not in ("sequence", "token"):
        raise ValueError(f"gspo.level must be 'sequence' or 'token', got {level!r}")
    adv = advantages[:, None] if advantages.dim() == 1 else advantages                   # [N,1] or [N,T]
    mask = mask if mask.dtype == torch.bool else mask != 0                               # [N,T]
    seq = sequence_log_ratio(logprobs, old_logprobs, mask).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N]
    if level == "sequence":
        log_s = seq[:, None].expand_as(logprobs)                                         # [N,T]
    else:
        log_s = (seq.detach()[:, None] + logprobs - logprobs.detach()).clamp(max=10.0)   # [N,T]
    s = torch.exp(log_s)                                                                 # [N,T]
    unclipped, clipped = -adv * s, -adv * s.clamp(1.0 - eps_low, 1.0 + eps_high)         # [N,T]
    loss = torch.where(mask, torch.maximum(unclipped, clipped), 0.0)                     # [N,T]
    token_log_ratio = (logprobs - old_logprobs).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N,T]
    metrics = _ratio_metrics(torch.exp(token_log_ratio), token_log_ratio, (clipped > unclipped).detach(), mask)
    metrics["seq_ratio_mean"] = ops.masked_mean(s.detach(), mask)
    return loss, metrics


def token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor, mean_adv: float,
                     mean_logprob: float) -> torch.Tensor:
    """Per-token centred covariance ``(A_t - mean A)(logprobs_t - mean logprobs)`` [N,T] (Cui et al., arXiv
    2505.22617, Eq. 4's summand); the means are over the mini-batch's trained tokens (given, e.g. global)."""
    adv = advantages[:, None] if advantages.dim() == 1 else advantages                   # [N,1] or [N,T]
    return (adv - mean_adv) * (logprobs.detach() - mean_logprob)                          # [N,T]


def kl_cov_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                selected: torch.Tensor, *, kl_coef: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov per-token loss [N,T]: ``-A r_t`` everywhere (no clipping), plus ``kl_coef * |log r_t|`` on the
    ``selected`` [N,T] bool tokens (the top share by covariance); 0 where mask is False. Metrics: "kl_cov_frac"
    (selected share of trained tokens), "ratio_mean", "approx_kl"."""
    adv = advantages[:, None] if advantages.dim() == 1 else advantages                   # [N,1] or [N,T]
    mask = mask if mask.dtype == torch.bool else mask != 0                               # [N,T]
    log_ratio = logprobs - old_logprobs                                                  # [N,T]
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))                # [N,T]
    loss = -adv * ratio + torch.where(selected, kl_coef * log_ratio.abs(), 0.0)          # [N,T]
    metrics = _ratio_metrics(ratio.detach(), log_ratio.detach(), selected & mask, mask)
    metrics["kl_cov_frac"] = metrics.pop("clip_frac")
    return torch.where(mask, loss, 0.0), metrics


def token_uniforms(response_ids: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """A uniform in [0, 1) per token [N,T] that depends only on (seed, the completion's group and tokens, t): the
    same value whatever the micro-batch layout or world size (identical completions share their values)."""
    from rlkit.rollout.seeded_sampling import _hash32
    T = response_ids.shape[1]
    pos = torch.arange(T, device=response_ids.device)                                      # [T]
    tok = _hash32(response_ids.long() * 0x9E3779B1 + pos * 0x85EBCA6B) * mask.long()       # [N,T]
    row = _hash32(tok.sum(-1) + group_ids.long() * 0x27D4EB2F + seed * 0x165667B1)         # [N]
    return _hash32(row[:, None] ^ _hash32(pos * 0x2545F491 + 1)[None, :]).double() / 4294967296.0  # [N,T]


def clip_cov_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  detached: torch.Tensor, *, eps_low: float = 0.2,
                  eps_high: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov per-token loss [N,T]: PPO's clipped surrogate, with the ``detached`` [N,T] bool tokens (a random
    share of the covariance band) contributing neither loss nor gradient; 0 where mask is False. Metrics:
    "clip_cov_frac" (detached share of trained tokens), "clip_frac", "ratio_mean", "approx_kl"."""
    loss, metrics = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, eps_low=eps_low, eps_high=eps_high)
    metrics["clip_cov_frac"] = ops.masked_mean((detached & mask).float(), mask)
    return torch.where(detached, 0.0, loss), metrics
