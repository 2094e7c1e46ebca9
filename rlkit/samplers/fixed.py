"""``sampler: fixed`` -- every prompt gets ``rollout.n`` completions in one round (GRPO / TRL / verl default).

Options: ``n`` overrides ``rollout.n`` for this sampler (default: use ``rollout.n``).
"""

from __future__ import annotations

from rlkit.registry import SAMPLERS
from rlkit.samplers.base import Sampler


@SAMPLERS.register("fixed")
class FixedSampler(Sampler):
    """The same number of completions for every prompt, one round, everything kept."""

    fixed_group_size = True

    def __init__(self, n: int | None = None):
        if n is not None and n < 1:
            raise ValueError(f"sampler.n must be >= 1, got {n}")
        self.n = n

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        return [self.n or group_size] * len(prompts)
