r"""``sampler: reinforce_ada`` -- keep sampling a prompt in rounds until its pool can fill a useful group.

Paper: Xiong et al., "Reinforce-Ada: An Adaptive Sampling Framework for Reinforce-Style LLM Training",
arXiv 2510.04996; reference code RLHFlow/Reinforce-Ada. Spec: ALGORITHMS.md §7. The maths is
``rlkit.functional.reinforce_ada_*``.

One step (this process's P prompts, effective group n = ``n`` or ``rollout.n``):

1. every prompt is active; each round generates ``round_repeat`` (M >= n) completions for every active prompt,
   batched across prompts in one ``generate`` call on the same engine, and scores them;
2. only after the whole round is absorbed, a prompt whose pool meets the exit rule leaves (``balanced``:
   #pos >= floor(n/2) and #neg >= n - floor(n/2); ``positive_focused``: #pos >= 1); a completion is positive iff
   its reward > ``threshold``;
3. after ``rounds`` rounds (or when no prompt is active) every prompt keeps exactly min(n, |pool|) completions
   (``reinforce_ada_select``: balanced positives/negatives in generation order, topped up from the other kind;
   unfinished prompts use the fallback targets);
4. ``global_stats: true`` (the released script): the baseline is measured over the *whole pool*, reconstructed as
   #pos ones and #neg zeros, mu = #pos/L, sigma = max(std_Bessel, eps) (``reinforce_ada_pool_stats``); the batch
   carries them as ``pool_mean`` / ``pool_std`` and ``advantage: grpo`` uses them (``scale: none`` gives the
   paper's A = r - mu; ``scale: group`` divides by sigma + eps). ``global_stats: false``: plain GRPO statistics of
   the kept group.

rlkit choices:
    * Unscorable completions (NaN reward) stay out of the pool statistics, the exit test and the kept group; a
      prompt whose every completion is unscorable keeps none.
    * The reference pads each round to a multiple of the data-parallel size by duplicating rows; rlkit's engines
      take any request count, so there is no padding.
    * ``global_stats: true`` needs an estimator that reads pool statistics (grpo) and the identity objective
      (``objective: mean``); other combinations are refused at build time with the fix named.

Cost: a prompt that never meets the exit rule takes all ``rounds`` x M completions. Where most prompts are solved
or unsolvable, ``balanced`` rarely fires (5.8 % of prompts, 3.9x fixed's rollouts per step, in
benchmarks/sample_efficiency.py); ``positive_focused`` lets solved prompts leave after one round.

Metrics (``sampler/``): ``rounds``, ``finished_frac`` (prompts that met the exit rule), ``samples_per_prompt``
(mean pool size), ``pos_frac`` (positives over all generated), ``kept`` (completions trained).
"""

from __future__ import annotations

import torch

from rlkit.functional.reinforce_ada import (reinforce_ada_exit, reinforce_ada_pool_stats, reinforce_ada_select,
                                            REINFORCE_ADA_RULES)
from rlkit.registry import SAMPLERS
from rlkit.samplers.base import RolloutPool, Sampler


@SAMPLERS.register("reinforce_ada")
class ReinforceAdaSampler(Sampler):
    """Multi-round sampling with an exit rule per prompt, balanced fixed-size groups, global pool statistics."""

    def __init__(self, rounds: int = 4, round_repeat: int = 8, threshold: float = 0.7, rule: str = "balanced",
                 global_stats: bool = True, n: int | None = None, eps: float = 1e-6):
        if rule not in REINFORCE_ADA_RULES:
            raise ValueError(f"sampler.rule={rule!r} is not valid; choose one of {', '.join(REINFORCE_ADA_RULES)}")
        for name, value in (("rounds", rounds), ("round_repeat", round_repeat)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sampler.{name}={value!r} must be an integer >= 1")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"sampler.n={n!r} must be an integer >= 1 (the effective group size; default rollout.n)")
        if not eps > 0:
            raise ValueError(f"sampler.eps={eps!r} must be > 0")
        self.rounds, self.repeat, self.threshold, self.rule = rounds, round_repeat, threshold, rule
        self.global_stats, self.n, self.eps = global_stats, n, eps
        self.provides_pool_stats = global_stats
        self._metrics: dict[str, float] = {}

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        self._n = self.n or group_size
        if self.repeat < self._n:
            raise ValueError(f"sampler.round_repeat={self.repeat} must be >= the effective group size n={self._n} "
                             "(M >= n in the paper): raise round_repeat or lower sampler.n / rollout.n")
        self._active = [True] * len(prompts)
        self._round = 1
        return [self.repeat] * len(prompts)

    def _pools(self, pool: RolloutPool) -> list[list[int]]:
        """Scorable rows of each prompt, in generation order."""
        rows: list[list[int]] = [[] for _ in pool.prompts]
        for r, p in enumerate(pool.prompt_index):
            if pool.rewards[r] == pool.rewards[r]:
                rows[p].append(r)
        return rows

    def _counts(self, pool: RolloutPool, rows: list[int]) -> tuple[int, int]:
        pos = sum(pool.rewards[r] > self.threshold for r in rows)
        return pos, len(rows) - pos

    def next_round(self, pool: RolloutPool) -> list[int]:
        for p, rows in enumerate(self._pools(pool)):
            if self._active[p] and reinforce_ada_exit(*self._counts(pool, rows), self._n, self.rule):
                self._active[p] = False
        if self._round >= self.rounds or not any(self._active):
            return []
        self._round += 1
        return [self.repeat if a else 0 for a in self._active]

    def finalize(self, pool: RolloutPool) -> list[int]:
        keep: list[int] = []
        pools = self._pools(pool)
        for p, rows in enumerate(pools):
            if not rows:
                continue
            rewards = torch.tensor([pool.rewards[r] for r in rows], dtype=torch.float64)  # [L]
            chosen = reinforce_ada_select(rewards, self._n, threshold=self.threshold, rule=self.rule,
                                          finished=not self._active[p])  # [min(n, L)]
            keep += [rows[i] for i in chosen.tolist()]
        total = sum(len(rows) for rows in pools)
        pos = sum(self._counts(pool, rows)[0] for rows in pools)
        self._metrics = {"rounds": float(self._round),
                         "finished_frac": 1.0 - sum(self._active) / max(len(self._active), 1),
                         "samples_per_prompt": len(pool.completions) / max(len(pool.prompts), 1),
                         "pos_frac": pos / total if total else 0.0, "kept": float(len(keep))}
        return keep

    def pool_stats(self, pool: RolloutPool) -> torch.Tensor | None:
        if not self.global_stats:
            return None
        stats = [reinforce_ada_pool_stats(*self._counts(pool, rows), eps=self.eps) for rows in self._pools(pool)]
        return torch.tensor(stats, dtype=torch.float64).reshape(len(pool.prompts), 2)  # [P, 2]

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)
