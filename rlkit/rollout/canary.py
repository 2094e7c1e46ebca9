"""Sync canary: prove after a weight sync that the engine samples from the trainer's current weights.

The engine scores a fixed probe sequence (prompt + continuation) and the trainer scores the same tokens with its
own forward pass; if the mean absolute log-prob difference exceeds the tolerance, the run stops with
:class:`WeightSyncError` -- the weights were not applied (a silently skipped sync, an adapter that never reached
the engine, a name mismatch). The difference is logged as ``rollout/canary_diff`` on every check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit.forward import token_logprobs


class WeightSyncError(RuntimeError):
    """The rollout engine's weights do not match the trainer's after a sync."""


DEFAULT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2}


@dataclass(frozen=True)
class Canary:
    """The run's canary: its probe, the pad id, how often it runs (``rollout.canary_every``: at the start and
    after every k-th sync; 0 = never) and its tolerance (``rollout.canary_tolerance``; None = by precision,
    :func:`default_tolerance`)."""

    probe: tuple[list[int], list[int]]
    pad_id: int
    every: int = 1
    tolerance: float | None = None

    def check(self, engine, policy, version: int) -> dict[str, float]:
        """:func:`check_sync` on this probe: {"canary_diff": ...}, or WeightSyncError."""
        return check_sync(engine, policy, self.probe, pad_id=self.pad_id, tolerance=self.tolerance, version=version)

    def due(self, version: int) -> bool:
        """Check after sync ``version`` (every ``every``-th; never when ``every`` is 0)."""
        return bool(self.every) and version % self.every == 0


def make_probe(tokenizer, prompt_ids: list[int], length: int = 16) -> tuple[list[int], list[int]]:
    """A fixed probe: a training prompt followed by a fixed text continuation (digits and letters)."""
    cont = tokenizer("0123456789 the answer is 42.", add_special_tokens=False).input_ids[:length]
    return list(prompt_ids), cont


def check_sync(engine, policy, probe: tuple[list[int], list[int]], *, pad_id: int, tolerance: float | None,
               version: int) -> dict[str, float]:
    """Compare every engine replica's log-probs of ``probe`` with the policy's; raise if any replica is off."""
    replicas = engine.probe_all(*probe)
    if not replicas:
        return {}
    prompt, cont = probe
    ids = torch.tensor([cont])                                                           # [1, T]
    mask = torch.ones_like(ids, dtype=torch.bool)                                        # [1, T]
    mode = policy.training
    policy.eval()   # as the engine samples: no dropout (e.g. model.lora.dropout)
    try:
        with torch.no_grad():
            lp, _ = token_logprobs(policy, [prompt], ids, mask, pad_id=pad_id)          # [1, T]
    finally:
        policy.train(mode)
    diffs = {name: (lp[0].float().cpu() - torch.tensor(values)).abs().mean().item() for name, values in replicas.items()}
    tol = tolerance if tolerance is not None else default_tolerance(next(policy.parameters()).dtype, engine.precision)
    bad = {name: d for name, d in diffs.items() if not d <= tol}
    if bad:
        where = ", ".join(f"{name}: {d:.3g}" for name, d in bad.items())
        raise WeightSyncError(
            f"sync canary failed after weight sync #{version}: the engine's log-probs of the probe differ from the "
            f"trainer's by {where} on average (tolerance {tol:g}). The new weights were not applied to the rollout "
            "engine; stopping rather than training on stale rollouts. Raise rollout.canary_tolerance only if the "
            "engine legitimately runs in a different precision.")
    return {"canary_diff": max(diffs.values())}


def default_tolerance(policy_dtype: torch.dtype, engine_dtype: torch.dtype | None) -> float:
    """The looser of the two precisions' tolerances (an engine may run a float32 policy in bfloat16)."""
    return max(DEFAULT_TOLERANCE.get(d, 5e-2) for d in (policy_dtype, engine_dtype or policy_dtype))
