"""KL penalty to a reference policy as a per-token loss: beta * KL_estimate(pi || pi_ref).

    x  = ref_logprobs - logprobs
    k1 = -x,   k2 = x^2 / 2,   k3 = exp(x) - 1 - x      (x clamped to [-20, 20] before exp)

Estimators from J. Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html); the KL
term of GRPO (arXiv 2402.03300) is k3. The maths is ``rlkit.functional.kl_penalty``.

Deviations / choices:
* ``beta = 0`` (the default, as TRL's ``beta=0.0``) needs no reference model: ``requires`` is empty, the loss
  is all zeros, and the "kl" metric is reported only when ``ref_logprobs`` happen to be present.
* verl's ``low_var_kl`` additionally clamps the k3 value to [-10, 10]; rlkit clamps only x before exp.
* The metric "kl" is the masked token mean of the estimator, not multiplied by beta.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit import ops
from rlkit.plugin_api import Loss, MicroBatch
from rlkit.registry import LOSSES


@LOSSES.register("kl")
class KLLoss(Loss):
    """beta * per-token KL estimate against the reference policy; needs ref_logprobs only if beta > 0."""

    def __init__(self, beta: float = 0.0, estimator: str = "k3"):
        if not beta >= 0:
            raise ValueError(f"beta={beta!r} must be >= 0")
        F.check_choice("estimator", estimator, list(F.KL_ESTIMATORS))
        self.beta, self.estimator = beta, estimator
        self.requires = frozenset({"ref_logprobs"}) if beta > 0 else frozenset()

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ref = micro.batch.ref_logprobs  # [n,T] or None
        mask = micro.batch.response_mask  # [n,T] bool
        if ref is None:
            if self.beta > 0:
                raise ValueError("kl loss with beta > 0 needs ref_logprobs, but the micro-batch has none")
            return torch.zeros_like(micro.logprobs), {}  # [n,T]
        kl = F.kl_penalty(micro.logprobs, ref, self.estimator)  # [n,T]
        metrics = {"kl": ops.masked_mean(kl.detach(), mask)}
        if self.beta == 0:
            return torch.zeros_like(micro.logprobs), metrics  # [n,T]
        return torch.where(mask, self.beta * kl, 0.0), metrics  # [n,T]
