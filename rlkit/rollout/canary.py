"""Sync canary: prove after a weight sync that the engine samples from the trainer's current weights.

The engine scores a fixed probe sequence (prompt + continuation) and the trainer scores the same tokens with its
own forward pass; if the mean absolute log-prob difference exceeds the tolerance, the run stops with
:class:`WeightSyncError` -- the weights were not applied (a silently skipped sync, an adapter that never reached
the engine, a name mismatch). The difference is logged as ``rollout/canary_diff`` on every check.
"""

from __future__ import annotations

import torch

from rlkit.forward import token_logprobs


class WeightSyncError(RuntimeError):
    """The rollout engine's weights do not match the trainer's after a sync."""


DEFAULT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def make_probe(tokenizer, prompt_ids: list[int], length: int = 16) -> tuple[list[int], list[int]]:
    """A fixed probe: a training prompt followed by a fixed text continuation (digits and letters)."""
    cont = tokenizer("0123456789 the answer is 42.", add_special_tokens=False).input_ids[:length]
    return list(prompt_ids), cont


def check_sync(engine, policy, probe: tuple[list[int], list[int]], *, pad_id: int, tolerance: float | None,
               version: int) -> dict[str, float]:
    engine_lp = engine.probe_logprobs(*probe)
    if engine_lp is None:
        return {}
    prompt, cont = probe
    ids = torch.tensor([cont])                                                           # [1, T]
    mask = torch.ones_like(ids, dtype=torch.bool)                                        # [1, T]
    with torch.no_grad():
        lp, _ = token_logprobs(policy, [prompt], ids, mask, pad_id=pad_id)              # [1, T]
    diff = (lp[0].float().cpu() - torch.tensor(engine_lp)).abs().mean().item()
    tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE.get(next(policy.parameters()).dtype, 5e-2)
    if not diff <= tol:
        raise WeightSyncError(
            f"sync canary failed after weight sync #{version}: the engine's log-probs of the probe differ from the "
            f"trainer's by {diff:.3g} on average (tolerance {tol:g}). The new weights were not applied to the rollout "
            "engine; stopping rather than training on stale rollouts. Raise rollout.canary_tolerance only if the "
            "engine legitimately runs in a different precision.")
    return {"canary_diff": diff}
