r"""KL estimators (J. Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html), estimating
KL(pi || pi_ref) from tokens sampled from pi, with x = log pi_ref - log pi:

    k1 = -x = logp - logp_ref          (unbiased, high variance, can be negative)
    k2 = x^2 / 2                        (biased, low variance, >= 0)
    k3 = exp(x) - 1 - x                 (unbiased, low variance, >= 0; x clamped to [-20, 20] before exp so a
                                         token the reference model finds impossible cannot overflow)
"""

from __future__ import annotations

from typing import Callable

import torch

from rlkit.functional.checks import LOG_RATIO_CLAMP, check_choice


def _kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs  # [N,T]


def _kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2  # [N,T]


def _kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    x = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N,T]
    return torch.exp(x) - 1.0 - x  # [N,T]


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3,
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) (module docstring), not masked, not reduced.

    Args:
        logprobs: [N,T] current policy (with grad).  ref_logprobs: [N,T] reference policy.
        kind: "k1" | "k2" | "k3".

    Returns:
        [N,T] per-token KL estimate.
    """
    check_choice("kind", kind, list(KL_ESTIMATORS))
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)  # [N,T]
