"""Mini-batch statistics shared by the covariance losses (``clip_cov``, ``kl_cov``), over every process.

Both centre ``(A_t - mean A)(log pi_old_t - mean log pi_old)`` with means over the mini-batch's trained tokens and
then keep the k most extreme values of a per-token score: :func:`covariance_means` and :func:`global_kth`.
"""

from __future__ import annotations

import torch

from rlkit.batch import RolloutBatch
from rlkit.dist import gather_lists, sum_over_processes


def covariance_means(rows: RolloutBatch, accelerator) -> tuple[float, float, float]:
    """(mean advantage, mean pi_old log-prob, trained-token count) over this mini-batch on every process."""
    mask, adv, old = rows.response_mask, rows.advantages, rows.old_logprobs                # [n, T] each
    adv = adv[:, None].expand_as(mask) if adv.dim() == 1 else adv                          # [n, T]
    sums = sum_over_processes(accelerator, {"n": float(mask.sum()), "a": float(adv[mask].sum()),
                                            "l": float(old[mask].sum())})
    count = max(sums["n"], 1.0)
    return sums["a"] / count, sums["l"] / count, sums["n"]


def global_kth(values: torch.Tensor, k: int, accelerator, *, largest: bool) -> float | None:
    """The k-th largest (or smallest) of ``values`` [m] pooled over every process; None when all are empty."""
    local = torch.topk(values, min(k, values.numel()), largest=largest).values.tolist() if values.numel() else []
    pooled = sorted((v for part in gather_lists(accelerator, local) for v in part), reverse=largest)
    return pooled[min(k, len(pooled)) - 1] if pooled else None
