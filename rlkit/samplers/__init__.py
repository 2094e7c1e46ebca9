"""Samplers: which prompts are rolled out, how many completions each gets, over how many rounds.

Protocol for one step (the trainer calls these in order, never testing the sampler's name):

0. ``prompts_needed(target) -> int`` -- how many candidate prompts to draw for a step that trains on ``target``
   prompts (default ``target``; ``dynamic`` oversamples); the data position advances by that many;
1. ``allocate(prompts, group_size) -> counts`` -- completions per prompt for round 0 (0 = skip the prompt);
2. after every round the trainer appends completions and rewards to a :class:`RolloutPool` and calls
   ``next_round(pool) -> counts``; all zeros (or an empty list) ends the rollout phase;
3. ``finalize(pool) -> rows`` -- which pool rows form the training batch (in the order they are trained);
4. after the optimizer step, ``update(batch, step) -> metrics`` updates cross-step state (checkpointed
   through ``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def counts(self) -> torch.Tensor:
        """[P] long, rows generated so far per prompt."""
        out = torch.zeros(len(self.prompts), dtype=torch.long)
        if self.prompt_index:
            out.index_add_(0, torch.tensor(self.prompt_index), torch.ones(len(self.prompt_index), dtype=torch.long))
        return out

    def rows_of(self, prompt: int) -> list[int]:
        return [r for r, p in enumerate(self.prompt_index) if p == prompt]


class Sampler(Plugin):
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


from rlkit.samplers import dynamic, fixed  # noqa: E402,F401  (registers built-ins)
