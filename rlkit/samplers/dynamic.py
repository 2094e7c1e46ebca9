"""``sampler: dynamic`` -- DAPO dynamic sampling (Yu et al., arXiv 2503.14476, §3.2): train only on groups whose
success signal varies, and keep generating until the step has enough of them.

Per step (this process's share of ``train.prompts_per_step`` = P prompts):

1. the trainer draws ``oversample * P`` candidate prompts; round 0 rolls out the first P (``rollout.n`` each);
2. a group is *informative* when its success signal is not constant, by an exact check: among its valid values
   (NaN = no signal, ignored) ``max != min``. The signal is the reward functions' ``success`` (e.g. exact
   match), never the shaped reward -- a format bonus or length penalty cannot make a group of all-wrong
   answers look informative. Only a group whose rows report no success at all falls back to the reward, with
   the same exact comparison (no float tolerance);
3. while fewer than P groups are informative, another round rolls out unused candidates: the deficit divided by
   the informative rate seen so far (at least the deficit), at most ``max_resample_rounds`` extra rounds and
   never more than the candidates left;
4. the batch is the first P informative groups (candidate order). If fewer were found, all of them are trained;
   if none was, the round-0 groups are kept (their advantages are all 0: the step updates nothing, and
   ``sampler/no_signal`` says so).

Metrics (``sampler/``): ``filtered_frac`` (uninformative share of the groups generated), ``extra_rollouts``
(completions generated beyond P x n), ``informative_groups``, ``rounds``, ``no_signal``.
Candidates that were not needed are skipped for this pass over the data (the stream reshuffles every epoch),
as DAPO skips the rest of its last batch. Each process samples its own share; a rank can end a step with fewer
groups than another (the update handles unequal shares).
"""

from __future__ import annotations

import math

from rlkit.registry import SAMPLERS
from rlkit.samplers.base import RolloutPool, Sampler


def informative(values: list[float], fallback: list[float]) -> bool:
    """Exact check: the valid (non-NaN) success values differ; the reward when no success signal exists."""
    valid = [v for v in values if v == v]
    if not valid:
        valid = [v for v in fallback if v == v]
    return len(valid) >= 2 and max(valid) != min(valid)


@SAMPLERS.register("dynamic")
class DynamicSampler(Sampler):
    """Drop groups with a constant success signal; refill from extra candidate prompts."""

    def __init__(self, oversample: int = 3, max_resample_rounds: int = 4, n: int | None = None):
        if not isinstance(oversample, int) or oversample < 1:
            raise ValueError(f"sampler.oversample={oversample!r} must be an integer >= 1 (candidate prompts drawn "
                             "per prompt of the step)")
        if max_resample_rounds < 0:
            raise ValueError(f"sampler.max_resample_rounds={max_resample_rounds} must be >= 0")
        if n is not None and n < 2:
            raise ValueError(f"sampler.n={n} must be >= 2: one completion per prompt has no variance to filter on")
        self.oversample, self.max_rounds, self.n = oversample, max_resample_rounds, n
        self._metrics: dict[str, float] = {}

    def prompts_needed(self, target: int) -> int:
        return target * self.oversample

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        self._target = max(1, len(prompts) // self.oversample)
        self._group = self.n or group_size
        self._next, self._rounds = self._target, 0
        return [self._group] * self._target + [0] * (len(prompts) - self._target)

    def _informative(self, pool: RolloutPool) -> list[int]:
        rows: dict[int, list[int]] = {}
        for r, p in enumerate(pool.prompt_index):
            rows.setdefault(p, []).append(r)
        return sorted(p for p, rs in rows.items()
                      if informative([pool.success[r] for r in rs], [pool.rewards[r] for r in rs]))

    def next_round(self, pool: RolloutPool) -> list[int]:
        found = len(self._informative(pool))
        left = len(pool.prompts) - self._next
        if found >= self._target or self._rounds >= self.max_rounds or left <= 0:
            return []
        rate = found / self._next
        want = min(left, max(self._target - found, math.ceil((self._target - found) / max(rate, 1e-9))))
        counts = [0] * len(pool.prompts)
        for p in range(self._next, self._next + want):
            counts[p] = self._group
        self._next += want
        self._rounds += 1
        return counts

    def finalize(self, pool: RolloutPool) -> list[int]:
        keep = self._informative(pool)[:self._target]
        generated_groups = self._next
        self._metrics = {"filtered_frac": 1.0 - len(self._informative(pool)) / generated_groups,
                         "extra_rollouts": float(len(pool.completions) - self._target * self._group),
                         "informative_groups": float(len(keep)), "rounds": float(self._rounds + 1),
                         "no_signal": float(not keep)}
        if not keep:
            keep = list(range(self._target))
        chosen = set(keep)
        return [r for r, p in enumerate(pool.prompt_index) if p in chosen]

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)
