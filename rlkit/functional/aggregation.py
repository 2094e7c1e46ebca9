r"""Loss aggregation (one optimizer step, global batch; L_i = trained tokens of row i, M = max_len):

    loss = sum_i coef_i * sum_t mask[i,t] * l[i,t] / Z
    token_mean               coef = 1            Z = sum_i L_i            (DAPO, arXiv 2503.14476)
    seq_mean_token_mean      coef = 1 / L_i      Z = #{i : L_i > 0}       (GRPO, arXiv 2402.03300)
    seq_mean_token_sum       coef = 1            Z = #{i : L_i > 0}
    seq_mean_token_sum_norm  coef = 1            Z = N * M                (Dr. GRPO paper / TRL "dr_grpo";
                             N counts empty rows too. NOT verl's mode of the same name, which divides each
                             micro-batch by M only.)
    delta_l                  coef = L_i^-a / sum_j L_j^-a   Z = M    (ΔL, arXiv 2509.07558: rlkit.functional.delta_l)

    Empty rows get coef 0 (their tokens are all masked anyway); Z falls back to 1 when it would be 0, so an
    all-masked batch gives exactly 0.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from rlkit import ops
from rlkit.functional.checks import check_choice
from rlkit.functional.delta_l import plan_delta_l


def _nonempty_count(lengths: torch.Tensor) -> float:
    """Number of rows with at least one trained token, or 1 if none."""
    return float(max(int((lengths > 0).sum()), 1))


def _plan_token_mean(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, float(max(int(lengths.sum()), 1))  # [N], Z


def _plan_seq_mean_token_mean(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    lf = lengths.to(torch.float32)  # [N]
    coef = torch.where(lengths > 0, 1.0 / lf.clamp(min=1), 0.0)  # [N]
    return coef, _nonempty_count(lengths)  # [N], Z


def _plan_seq_mean_token_sum(lengths: torch.Tensor, *, max_len: int | None = None) -> tuple[torch.Tensor, float]:
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, _nonempty_count(lengths)  # [N], Z


def _plan_seq_mean_token_sum_norm(lengths: torch.Tensor, *,
                                  max_len: int | None = None) -> tuple[torch.Tensor, float]:
    if max_len is None or max_len <= 0:
        raise ValueError(f"aggregation 'seq_mean_token_sum_norm' (Dr. GRPO) needs max_len > 0 (the constant "
                         f"length normaliser, e.g. the run's max response length); got max_len={max_len!r}")
    coef = torch.ones(lengths.shape, dtype=torch.float32, device=lengths.device)  # [N]
    return coef, float(max(lengths.numel(), 1) * max_len)  # [N], Z


AGGREGATION_MODES: dict[str, Callable[..., tuple[torch.Tensor, float]]] = {
    "token_mean": _plan_token_mean,
    "seq_mean_token_mean": _plan_seq_mean_token_mean,
    "seq_mean_token_sum": _plan_seq_mean_token_sum,
    "seq_mean_token_sum_norm": _plan_seq_mean_token_sum_norm,
    "delta_l": plan_delta_l,   # aggregate(loss, weights, "delta_l", max_len=M, alpha=0.75)
}
"""mode -> plan function ``(lengths[N], *, max_len=None, **mode_kwargs) -> (coef[N], Z)``."""


def aggregation_plan(lengths: torch.Tensor, mode: str, *, max_len: int | None = None,
                     **kwargs) -> tuple[torch.Tensor, float]:
    """Per-sequence coefficients and the normaliser of an aggregation mode (module docstring).

    Args:
        lengths: [N] long, trained tokens per sequence (over the whole global batch).
        mode: a key of ``AGGREGATION_MODES``.  max_len: constant length normaliser M (Dr. GRPO).
        **kwargs: mode-specific options, forwarded to the plan function.

    Returns:
        coef: [N] float32, normalizer: float > 0, such that loss = Σ_i coef_i Σ_t mask·ℓ / normalizer.
    """
    check_choice("mode", mode, list(AGGREGATION_MODES))
    plan_fn = AGGREGATION_MODES[mode]
    known = set(inspect.signature(plan_fn).parameters) - {"lengths", "max_len"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"aggregation {mode!r} has no option(s) {unknown}; its options: {sorted(known) or 'none'}")
    return plan_fn(lengths, max_len=max_len, **kwargs)  # [N], float


def aggregate(loss: torch.Tensor, weights: torch.Tensor, mode: str, *, max_len: int | None = None,
              **kwargs) -> torch.Tensor:
    """Reduce per-token losses to one scalar: Σ_i coef_i Σ_t w·ℓ / Z with the plan of ``mode``.

    Args:
        loss: [N,T] per-token loss.  weights: [N,T] float in [0, 1] (``token_weights``; a bool mask reads as
            1/0); a token counts in the lengths when its weight is > 0.  mode, max_len, **kwargs: as in
            ``aggregation_plan``.

    Returns:
        [] scalar; exactly 0 for an all-masked batch.
    """
    lengths = (weights > 0).sum(-1)  # [N]
    coef, normalizer = aggregation_plan(lengths, mode, max_len=max_len, **kwargs)  # [N], float
    per_seq = ops.masked_sum(loss, weights, dim=-1)  # [N]
    return (coef.to(per_seq.dtype) * per_seq).sum() / normalizer  # []
