"""The sampler protocol and its messages (``RolloutPool``, ``SamplerTools``): which prompts are rolled out, how many
completions each gets, over how many rounds.

Protocol for one step (the trainer calls these in order, never testing the sampler's name):

-. once, when the session is built: ``bind(tools)`` -- a :class:`SamplerTools` with what a sampler may ask of the
   trainer's side (gradient norms of the current policy, for GVM);
0. ``prompts_needed(target) -> int`` -- how many candidate prompts to draw for a step that trains on ``target``
   prompts (default ``target``; ``dynamic`` oversamples); the data position advances by that many;
1. ``begin(step)`` (records ``self.step``, the trainer step this rollout phase belongs to), then
   ``allocate(prompts, group_size) -> counts`` -- completions per prompt for round 0 (0 = skip the prompt);
2. after every round the trainer appends completions and rewards to a :class:`RolloutPool` and calls
   ``next_round(pool) -> counts``; all zeros (or an empty list) ends the rollout phase;
3. ``finalize(pool) -> rows`` -- which pool rows form the training batch (in the order they are trained), then
   ``pool_stats(pool)`` -- ``None`` (default), or a [P, 2] float tensor of (baseline mean, std) per prompt measured
   over *everything* generated for it; the rows of the batch carry them as ``RolloutBatch.pool_mean`` /
   ``pool_std``, and an estimator with ``uses_pool_stats`` (grpo) normalises with them instead of the kept group's
   statistics (Reinforce-Ada's ``global_stats``);
4. after the optimizer step, ``update(batch, step) -> metrics`` updates cross-step state (checkpointed
   through ``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlkit.plugin_api import Plugin
from rlkit.rollout import Completion


@dataclass
class RolloutPool:
    """Everything generated for this process's prompts in the current step, round by round."""

    prompts: list            # [P] PromptItem (rlkit.data)
    prompt_index: list[int] = field(default_factory=list)     # [R] which prompt each row belongs to
    completions: list[Completion] = field(default_factory=list)  # [R]
    round_index: list[int] = field(default_factory=list)      # [R] round that produced the row
    rewards: list[float] = field(default_factory=list)        # [R] weighted reward (NaN = unscorable)
    success: list[float] = field(default_factory=list)        # [R] 1/0, NaN = no success signal
    components: list[list[float]] = field(default_factory=list)  # [R, K]
    completion_texts: list[str] = field(default_factory=list)  # [R]
    reward_logs: list[dict[str, Any]] = field(default_factory=list)  # [R] reward functions' log_extra values

    def counts(self) -> torch.Tensor:
        """[P] long, rows generated so far per prompt."""
        out = torch.zeros(len(self.prompts), dtype=torch.long)
        if self.prompt_index:
            out.index_add_(0, torch.tensor(self.prompt_index), torch.ones(len(self.prompt_index), dtype=torch.long))
        return out

    def score(self, row: int) -> float:
        """The verifier score of a row: its success signal, else its reward (NaN when neither exists)."""
        s = self.success[row]
        return s if s == s else self.rewards[row]

    def rows_of(self, prompt: int) -> list[int]:
        return [r for r, p in enumerate(self.prompt_index) if p == prompt]


@dataclass
class SamplerTools:
    """Services of the trainer's side a sampler may use (bound once by ``build_session``).

    grad_norms(prompt_ids, response_ids) -> [k] float: for each sequence, ‖∇_θsub (−Σ_t log π(y_t | x, y_<t))‖₂ of
    the *current* policy, θsub being the parameters whose name contains the sampler's ``params`` pattern
    (``rlkit.grad_probe.sequence_grad_norms``); ``masks`` (multi-turn episodes) keeps environment tokens out of the sum.
    gather(values) -> every process's list, in rank order (``rlkit.dist.gather_lists``); samplers whose cross-step
    state must be the same on every process (VADE's posteriors) share their evidence through it.
    process_index: this process's rank.
    """

    grad_norms: Callable[..., torch.Tensor]   # (prompt_ids, response_ids, pattern, masks=None) -> [k]
    gather: Callable[[list], list[list]] = lambda values: [list(values)]
    process_index: int = 0


class Sampler(Plugin):
    #: True when ``pool_stats`` returns statistics the advantage estimator must use (checked at build time).
    provides_pool_stats: bool = False
    #: True when the sampler reads the live policy while choosing (GVM's gradient probe): it cannot run in the
    #: background generation of rollout.max_staleness > 0, while the optimizer updates that policy.
    reads_policy: bool = False
    #: True when every prompt gets exactly rollout.n completions in one round (the batch size is known before the
    #: run: ``rlkit show``'s arithmetic is exact only then).
    fixed_group_size: bool = False
    tools: SamplerTools | None = None
    step: int = 0

    def bind(self, tools: SamplerTools) -> None:
        self.tools = tools

    def begin(self, step: int) -> None:
        """Called before ``allocate``: the trainer step this rollout phase belongs to."""
        self.step = step

    def pool_stats(self, pool: RolloutPool) -> torch.Tensor | None:
        """[P, 2] (baseline mean, std) per prompt of the pool, or None (the estimator uses the kept group)."""
        return None

    def prompts_needed(self, target: int) -> int:
        """Candidate prompts to draw for a step that should train on ``target`` prompts (per process)."""
        return target

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        raise NotImplementedError

    def next_round(self, pool: RolloutPool) -> list[int]:
        return []

    def finalize(self, pool: RolloutPool) -> list[int]:
        return list(range(len(pool.completions)))

    def step_metrics(self) -> dict[str, float]:
        """Metrics of the rollout phase that just finalized (logged as ``sampler/<name>``)."""
        return {}

    def update(self, batch, step: int) -> dict[str, float]:
        return {}

