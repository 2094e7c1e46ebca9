"""The base classes every plug-in kind derives from (interfaces of DESIGN.md "Plug-in kinds").

A plug-in declares what it needs from the scoring pass in ``requires`` (a subset of
{"old_logprobs", "entropy", "ref_logprobs", "values"}); the trainer computes only what some plug-in
requires. Metrics are returned unprefixed; the trainer prefixes them by kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlkit.batch import RolloutBatch

SCORING_FIELDS = frozenset({"old_logprobs", "entropy", "ref_logprobs", "values"})


class Plugin:
    """Common base: declared requirements, metrics, checkpointable state (empty by default)."""

    requires: frozenset[str] = frozenset()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint holds {sorted(state)}")


class Objective(Plugin):
    """Per-group reward transform applied once per step before the advantage estimator.

    ``output`` says what the returned values are: "reward" (an estimator still subtracts a baseline) or
    "advantage" (the objective applied its own baseline; only ``advantage: passthrough`` may follow).
    ``identity``: True when the rewards are returned unchanged (statistics a sampler measured on raw rewards stay
    valid)."""

    output: str = "reward"
    identity: bool = False

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:  # [N], [N] -> [N]
        raise NotImplementedError


class AdvantageEstimator(Plugin):
    """RolloutBatch -> advantages [N, T] (0 where ``response_mask`` is False), plus metrics.

    ``takes_advantages``: True if the estimator can follow an objective whose output is already an advantage.
    ``uses_pool_stats``: True if it normalises with ``RolloutBatch.pool_mean`` / ``pool_std`` when a sampler sets
    them (a sampler with ``provides_pool_stats`` needs such an estimator).
    ``outputs``: batch fields it writes besides the advantages it returns (``gae``: ``{"returns"}``, the critic's
    value targets); a loss lists the ones it trains on in ``consumes``, checked when the plug-ins are built."""

    takes_advantages: bool = False
    uses_pool_stats: bool = False
    outputs: frozenset[str] = frozenset()

    def __call__(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class Selection(Plugin):
    """RolloutBatch -> token_weights [N, T] in [0, 1] (0 = not trained on), plus metrics."""

    def __call__(self, batch: RolloutBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


@dataclass
class MicroBatch:
    """What a loss plug-in sees for one micro-batch (n rows of the step's batch)."""

    batch: RolloutBatch            # the n rows (advantages, old/ref logprobs, token_weights ... are set)
    logprobs: torch.Tensor         # [n, T] current policy log-probs, with grad
    entropy: torch.Tensor | None   # [n, T] current policy entropy (with grad only if a loss sets needs_entropy_grad)
    values: torch.Tensor | None = None  # [n, T] current critic values, with grad (critic runs only)


class Loss(Plugin):
    """Per-token surrogate: MicroBatch -> loss [n, T] (never reduced), metrics (token means).

    ``needs_entropy_grad = True`` makes the training forward return ``MicroBatch.entropy`` with its gradient
    (one more [chunk, V] buffer in the chunked LM head's backward); otherwise the entropy is detached.
    ``consumes``: batch fields an advantage estimator must write (its ``outputs``), e.g. the value loss's
    ``{"returns"}``."""

    needs_entropy_grad: bool = False
    consumes: frozenset[str] = frozenset()

    def prepare(self, rows: "RolloutBatch", accelerator) -> None:
        """Called once per optimizer step on every process with its rows of the mini-batch (advantages and
        scoring-pass fields set), before the micro-batches: for statistics over the whole mini-batch (KL-Cov's
        covariance threshold). May use collectives (``rlkit.dist``). Default: nothing."""

    def __call__(self, micro: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


@dataclass
class AggregationPlan:
    """Loss = sum_i coef[i] * sum_t token_weights[i,t] * loss[i,t] / normalizer, over the global batch."""

    coef: torch.Tensor   # [N_global] float, per-sequence coefficient (the trainer slices its own rows)
    normalizer: float    # Z > 0, the same on every process


class Aggregation(Plugin):
    """Plans once per optimizer step over the *global* batch: lengths[N_global] -> coef, normalizer."""

    def plan(self, lengths: torch.Tensor, group_ids: torch.Tensor, max_len: int) -> AggregationPlan:
        raise NotImplementedError
