r"""``sampler: gvm`` -- GVM-RAFT dynamic sample allocation (Yao et al., arXiv 2505.02391; RLHFlow/GVM; ALGORITHMS.md §6).

Spend a fixed budget of completions where they reduce the gradient variance most:

    n_i ∝ G_i / sqrt(p_i + alpha / p_i^(beta - 1)),      sum_i n_i = N = P * budget_per_prompt

p_i = acceptance rate of a probe (``probe_n`` samples per prompt, accepted iff score > ``correct_threshold``; the
score is the reward functions' success signal, else the reward); G_i = mean over the accepted probe samples of
‖∇_θsub(−Σ_t log π(y_t|x, y_<t))‖₂ on the parameters whose name contains ``params`` (``embed_tokens``). The exact
integer rounding, the p_i = 0 / G_i = 0 rules and the uniform fallback are ``rlkit.functional.gvm_allocation``.

One step (this process's P prompts): round 0, the **probe**, ``probe_n`` completions for every prompt without a
fresh estimate (none, or one older than ``refresh_steps`` steps), gradient norms from the current policy
(``SamplerTools.grad_norms``); round 1, ``n_i`` completions per prompt from ``gvm_allocation`` over all P prompts
(n_i = 0: not trained this step; n_i = 1: a singleton group); the batch is round 1 (plus the probe with
``train_on_probe: true``). Variable group sizes: every estimator handles them (tests/unit/advantages/).

rlkit choices (the reference runs GVM as EM iterations over fixed data chunks, outside the RL trainer):
    * Estimates are cached per dataset row (``PromptItem.index``) and reused for ``refresh_steps`` steps (default 1:
      probe every step, as the reference re-probes each iteration). A prompt stream visits a row once per epoch, so
      ``refresh_steps`` larger than the steps of an epoch reuses last epoch's probe: cheaper, and staler.
    * Probe samples are not trained on by default (the reference's stage 1 only estimates); they are counted in
      ``sampler/probe_rollouts`` and the gradient time in ``sampler/probe_grad_s``.
    * Unscorable probe samples count as not accepted. ``grad_samples`` caps the accepted samples whose gradient is
      taken per prompt (default all, as the reference).
    * The reference pads the batch to a multiple of the GPU count; rlkit's update takes unequal shares, so no padding.
    * ``max_accept`` is the reference's ``filter_threshold`` (drop prompts with p_i > it; off in its released
      scripts, and off by default here): GVM's objective is RAFT's, where a prompt whose probe was all accepted still
      has a gradient; under GRPO its group is all-correct and trains on nothing, so ``max_accept: 0.99`` stops
      spending the budget on it (benchmarks/sample_efficiency.py measures both).

Metrics (``sampler/``): ``probe_rollouts``, ``probed_prompts``, ``probe_grad_s``, ``accept_rate`` (mean p_i), ``grad_norm``
(mean G_i where p_i > 0), ``skipped_prompts`` (n_i = 0), ``alloc_max``, ``alloc_min`` (over prompts kept).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from rlkit.functional.gvm import gvm_allocation
from rlkit.registry import SAMPLERS
from rlkit.samplers.base import RolloutPool, Sampler


@SAMPLERS.register("gvm")
class GVMSampler(Sampler):
    """Probe, then allocate a fixed completion budget across prompts by gradient variance (module docstring)."""

    reads_policy = True   # the gradient probe runs on the live policy

    def __init__(self, probe_n: int = 8, budget_per_prompt: int | None = None, alpha: float = 1e-3,
                 beta: float = 2.0, correct_threshold: float = 0.5, params: str = "embed_tokens",
                 refresh_steps: int = 1, train_on_probe: bool = False, grad_samples: int | None = None,
                 max_accept: float | None = None):
        for name, value, low in (("probe_n", probe_n, 1), ("refresh_steps", refresh_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"sampler.{name}={value!r} must be an integer >= {low}")
        for name, value in (("budget_per_prompt", budget_per_prompt), ("grad_samples", grad_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"sampler.{name}={value!r} must be an integer >= 1 (or unset)")
        if max_accept is not None and not (isinstance(max_accept, (int, float)) and 0 <= max_accept <= 1):
            raise ValueError(f"sampler.max_accept={max_accept!r} must be a number in [0, 1] (drop prompts whose "
                             "probe acceptance rate exceeds it), or unset")
        if not params:
            raise ValueError("sampler.params must name a parameter subset, e.g. 'embed_tokens'")
        gvm_allocation(torch.ones(1), torch.ones(1), 1, alpha=alpha, beta=beta)  # validates alpha / beta
        self.probe_n, self.budget, self.alpha, self.beta = probe_n, budget_per_prompt, alpha, beta
        self.threshold, self.params, self.refresh = correct_threshold, params, refresh_steps
        self.train_on_probe, self.grad_samples, self.max_accept = train_on_probe, grad_samples, max_accept
        self.estimates: dict[int, tuple[float, float, int]] = {}  # dataset row -> (p_i, G_i, step probed)
        self._metrics: dict[str, float] = {}

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        self._budget = len(prompts) * (self.budget or group_size)
        self._probed = [i for i, p in enumerate(prompts) if self._stale(p.index)]
        self._metrics = {"probe_rollouts": float(len(self._probed) * self.probe_n),
                         "probed_prompts": float(len(self._probed)), "probe_grad_s": 0.0}
        if self._probed:
            self._alloc_round = 1
            probed = set(self._probed)
            return [self.probe_n if i in probed else 0 for i in range(len(prompts))]
        self._alloc_round = 0
        return self._allocation(prompts)

    def next_round(self, pool: RolloutPool) -> list[int]:
        if max(pool.round_index, default=0) >= self._alloc_round:
            return []
        self._estimate(pool)
        return self._allocation(pool.prompts)

    def finalize(self, pool: RolloutPool) -> list[int]:
        first = 0 if self.train_on_probe else self._alloc_round
        return [r for r, k in enumerate(pool.round_index) if k >= first]

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def _stale(self, index: int) -> bool:
        est = self.estimates.get(index)
        return est is None or self.step - est[2] >= self.refresh

    def _estimate(self, pool: RolloutPool) -> None:
        """p_i and G_i of every probed prompt from round 0 (module docstring, step 1)."""
        rows_of: dict[int, list[int]] = {i: [] for i in self._probed}
        for r, (p, k) in enumerate(zip(pool.prompt_index, pool.round_index)):
            if k == 0:
                rows_of[p].append(r)
        accepted = {i: [r for r in rows if pool.score(r) > self.threshold] for i, rows in rows_of.items()}
        wanted = [(i, r) for i, rows in accepted.items() for r in rows[:self.grad_samples]]
        if wanted and self.tools is None:
            raise RuntimeError("sampler 'gvm' needs the trainer's gradient probe; call Sampler.bind(SamplerTools(...)) "
                               "first (build_session does)")
        t0 = time.perf_counter()
        comps = [(pool.prompts[i], pool.completions[r]) for i, r in wanted]
        masks = [c.model_mask for _, c in comps] if any(c.model_mask is not None for _, c in comps) else None
        norms = self.tools.grad_norms([c.prompt_ids if c.prompt_ids is not None else p.prompt_ids for p, c in comps],
                                      [list(c.token_ids) for _, c in comps], self.params,
                                      **({"masks": masks} if masks else {})).tolist() if wanted else []
        self._metrics["probe_grad_s"] = time.perf_counter() - t0
        per_prompt: dict[int, list[float]] = {}
        for (i, _), g in zip(wanted, norms):
            per_prompt.setdefault(i, []).append(g)
        for i, rows in rows_of.items():
            p_i = len(accepted[i]) / len(rows) if rows else 0.0
            g = per_prompt.get(i, [])
            self.estimates[pool.prompts[i].index] = (p_i, sum(g) / len(g) if g else 0.0, self.step)

    def _allocation(self, prompts: list) -> list[int]:
        p, g = zip(*[self.estimates[item.index][:2] for item in prompts])
        if self.max_accept is not None:   # the reference's filter_threshold: a zero weight drops the prompt
            g = tuple(0.0 if pi > self.max_accept else gi for pi, gi in zip(p, g))
        counts = gvm_allocation(torch.tensor(p), torch.tensor(g), self._budget, alpha=self.alpha,
                                beta=self.beta).tolist()  # [P]
        kept = [c for c in counts if c > 0]
        self._metrics.update({
            "accept_rate": sum(p) / len(p),
            "grad_norm": statistics.fmean(with_g) if (with_g := [gi for pi, gi in zip(p, g) if pi > 0]) else math.nan,
            "skipped_prompts": float(len(counts) - len(kept)),
            "alloc_max": float(max(kept, default=0)), "alloc_min": float(min(kept, default=0))})
        return counts

    def state_dict(self) -> dict:
        return {"estimates": {int(k): list(v) for k, v in self.estimates.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.estimates = {int(k): (float(v[0]), float(v[1]), int(v[2])) for k, v in state.get("estimates", {}).items()}
