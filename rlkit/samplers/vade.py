r"""``sampler: vade`` -- choose prompts before rollout by Thompson sampling on Beta posteriors of their success rate.

Paper: Hu et al., "VADE: Variance-Aware Dynamic sampling via online sample-level Difficulty Estimation",
arXiv 2511.18902 (CVPR 2026 Findings). Spec: ALGORITHMS.md §8. The maths is ``rlkit.functional.vade_*``.

**From the paper (abstract level only; its full text and code could not be read):** a Beta distribution per
training sample over its correctness probability; a Thompson sampler that picks the samples maximising an
information-gain objective of the sampled probability; a two-scale prior decay that keeps the estimates valid while
the policy moves; selection happens before rollout and costs no extra rollouts.

**Reconstructed by rlkit (modelled on MoPPS, verl ``recipe/mopps``), every formula and default below:**

1. the trainer draws ``candidates`` x P prompts (the candidate pool, via ``prompts_needed``);
2. each candidate's posterior Beta(a_i, b_i) (prior (a0, b0) = ``prior``, default (1, 1), for a row never seen)
   first gets the lazy **global decay** for the Δ_i steps since it was last touched:
   a <- a0 + lam_global^Δ (a - a0), b <- b0 + lam_global^Δ (b - b0);
3. a **Thompson draw** p̃_i ~ Beta(a_i, b_i) and a score IG(p̃_i): ``variance`` p(1-p) (default),
   ``nondegenerate`` 1 - p^G - (1-p)^G (same ranking as variance), or ``knapsack`` p(1-p)^2 (Knapsack-RL's
   InfoGain, arXiv 2509.25849, the only formula a secondary source attributes to VADE -- unconfirmed); the top P
   candidates by score (ties: candidate order) get ``rollout.n`` completions, the others none;
4. after the optimizer step, each trained prompt's posterior gets the **local decay** with its outcome:
   a <- lam_local a + (1 - lam_local) a0 + s_i, b <- lam_local b + (1 - lam_local) b0 + f_i, s_i = sum of the
   group's success signal (the reward when no success is reported; it must lie in [0, 1]), f_i = G_i - s_i.

State (checkpointed): ``{dataset row: (a, b, step last touched)}`` and the Thompson sampler's RNG. The RNG is
counter-based: step s on process k draws from numpy's PCG64 seeded by ``(train.seed, s, k)``, so its whole state is
the seed (saved) and the step (saved by the trainer); a resume -- also a multi-process one, or one that re-draws a
step whose batch the checkpoint lacks with ``rollout.max_staleness > 0`` -- draws the same numbers as an
uninterrupted run (tests/integration/test_samplers.py). The outcomes of every process are gathered before the
update, so all processes hold the same posteriors and the one the main process saves is complete. With
``max_staleness: k > 0`` step t's prompts are chosen before the outcomes of steps t-k..t-1 arrive
(rlkit/rollout/prefetch.py).

rlkit choices: posteriors are keyed by the dataset row (``PromptItem.index``), stable across epochs and shuffles;
the global decay is applied lazily (it composes: Δ1 then Δ2 steps equals Δ1 + Δ2), to the candidates' copies at
selection time and to the stored posterior only when new evidence arrives; unscorable completions count as neither
success nor failure; the candidates not chosen are skipped for this pass over the data (as ``sampler: dynamic``).

Metrics (``sampler/``): ``seen_frac`` (candidates with a posterior), ``chosen_mean`` (posterior mean of the chosen),
``candidates_mean`` (of all candidates), ``chosen_draw`` (mean Thompson draw of the chosen), ``chosen_score``,
``posterior_var`` (mean posterior variance of the chosen).
"""

from __future__ import annotations

import numpy as np
import torch

from rlkit.functional.vade import VADE_SCORES, vade_decay, vade_posterior_stats, vade_scores, vade_update
from rlkit.registry import SAMPLERS
from rlkit.samplers.base import Sampler


@SAMPLERS.register("vade")
class VADESampler(Sampler):
    """Thompson sampling over per-prompt Beta posteriors with two-scale decay (module docstring)."""

    def __init__(self, candidates: int = 2, score: str = "variance", lam_local: float = 0.9,
                 lam_global: float = 0.99, prior: tuple[float, float] | list[float] = (1.0, 1.0),
                 n: int | None = None, seed: int = 0):
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"sampler.candidates={candidates!r} must be an integer >= 1 (candidate prompts drawn per "
                             "prompt trained; 1 = no choice)")
        if score not in VADE_SCORES:
            raise ValueError(f"sampler.score={score!r} is not valid; choose one of {', '.join(VADE_SCORES)}")
        if len(prior) != 2 or min(prior) <= 0:
            raise ValueError(f"sampler.prior={list(prior)} must be two numbers > 0: [alpha0, beta0]")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"sampler.n={n!r} must be an integer >= 1 (default rollout.n)")
        one = torch.ones(1, dtype=torch.float64)
        vade_update(one, one, one, one, lam_local=lam_local, prior=tuple(prior))    # validates lam_local
        vade_decay(one, one, 1, lam_global=lam_global, prior=tuple(prior))          # validates lam_global
        self.candidates, self.score, self.n = candidates, score, n
        self.lam_local, self.lam_global, self.prior = lam_local, lam_global, (float(prior[0]), float(prior[1]))
        self.posteriors: dict[int, tuple[float, float, int]] = {}   # dataset row -> (alpha, beta, step touched)
        self.seed = seed
        self._metrics: dict[str, float] = {}

    def prompts_needed(self, target: int) -> int:
        return target * self.candidates

    # ------------------------------------------------------------------ selection before rollout
    def _decayed(self, rows: list[int], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Posteriors of dataset ``rows`` with the global decay up to ``step`` applied -> [C], [C] (not stored)."""
        a0, b0 = self.prior
        state = [self.posteriors.get(i, (a0, b0, step)) for i in rows]
        a = torch.tensor([x[0] for x in state], dtype=torch.float64)  # [C]
        b = torch.tensor([x[1] for x in state], dtype=torch.float64)  # [C]
        unseen = torch.tensor([max(step - x[2], 0) for x in state], dtype=torch.long)  # [C]
        return vade_decay(a, b, unseen, lam_global=self.lam_global, prior=self.prior)  # [C], [C]

    def allocate(self, prompts: list, group_size: int) -> list[int]:
        target = max(1, len(prompts) // self.candidates)
        group = self.n or group_size
        rows = [p.index for p in prompts]
        a, b = self._decayed(rows, self.step)  # [C], [C]
        rng = np.random.default_rng([self.seed, self.step, self.tools.process_index if self.tools else 0])
        draws = torch.from_numpy(rng.beta(a.numpy(), b.numpy()))  # [C] Thompson draws
        scores = vade_scores(draws, kind=self.score, group_size=group)  # [C]
        order = torch.sort(-scores, stable=True).indices[:target]  # [target], ties -> candidate order
        chosen = set(order.tolist())
        mean, var = vade_posterior_stats(a, b)  # [C], [C]
        self._metrics = {"seen_frac": sum(i in self.posteriors for i in rows) / len(rows),
                         "candidates_mean": mean.mean().item(), "chosen_mean": mean[order].mean().item(),
                         "chosen_draw": draws[order].mean().item(), "chosen_score": scores[order].mean().item(),
                         "posterior_var": var[order].mean().item()}
        return [group if i in chosen else 0 for i in range(len(prompts))]

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # ------------------------------------------------------------------ evidence after the step
    def update(self, batch, step: int) -> dict[str, float]:
        signal = torch.where(torch.isnan(batch.success), batch.raw_rewards.float(), batch.success.float())  # [N]
        ok = ~torch.isnan(signal)  # [N]
        if ((signal[ok] < 0) | (signal[ok] > 1)).any():
            bad = signal[ok][(signal[ok] < 0) | (signal[ok] > 1)][0].item()
            raise ValueError(f"sampler 'vade' needs outcomes in [0, 1] (successes), got reward {bad}: report a 0/1 "
                             "success from the reward function ({'reward': r, 'success': s}) or scale the reward")
        local = _evidence(batch.dataset_index[ok], signal[ok].double())  # [(row, successes, count)]
        merged: dict[int, list[float]] = {}
        for row, succ, count in (t for part in (self.tools.gather(local) if self.tools else [local]) for t in part):
            acc = merged.setdefault(row, [0.0, 0.0])   # every process's outcomes for this row: [successes, count]
            acc[0], acc[1] = acc[0] + succ, acc[1] + count
        uniq = torch.tensor(sorted(merged), dtype=torch.long)  # [U]
        succ = torch.tensor([merged[i][0] for i in uniq.tolist()], dtype=torch.float64)  # [U]
        total = torch.tensor([merged[i][1] for i in uniq.tolist()], dtype=torch.float64)  # [U]
        a, b = self._decayed(uniq.tolist(), step)  # [U], [U]
        a, b = vade_update(a, b, succ, total - succ, lam_local=self.lam_local, prior=self.prior)  # [U], [U]
        for i, ai, bi in zip(uniq.tolist(), a.tolist(), b.tolist()):
            self.posteriors[i] = (ai, bi, step)
        return {"tracked_prompts": float(len(self.posteriors))}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"posteriors": {int(k): list(v) for k, v in self.posteriors.items()}, "rng_seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.posteriors = {int(k): (float(v[0]), float(v[1]), int(v[2])) for k, v in state.get("posteriors", {}).items()}
        self.seed = int(state.get("rng_seed", self.seed))


def _evidence(rows: torch.Tensor, signal: torch.Tensor) -> list[tuple[int, float, float]]:
    """[(dataset row, sum of outcomes, number of outcomes)] per distinct row of ``rows`` [n] / ``signal`` [n]."""
    uniq, inverse = torch.unique(rows, return_inverse=True)  # [U], [n]
    succ = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, signal)  # [U]
    count = torch.bincount(inverse, minlength=len(uniq)).double()  # [U]
    return list(zip(uniq.tolist(), succ.tolist(), count.tolist()))


