"""Held-out evaluation during training: generate (greedy by default), score with the run's rewards, report.

Each process evaluates its slice of the prompts; counts are summed over processes. Accuracy is the mean of the
success signal (rewards that return {"reward", "success"}); prompts whose rewards report no success count by
``reward > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rlkit.dist import sum_over_processes
from rlkit.rollout import FINISH_LENGTH, SamplingParams, completion_seed
from rlkit.rollout.collect import generate_and_score


@dataclass(frozen=True)
class Evaluator:
    """A run's held-out evaluation: its prompts and sampling, and the services that generate and score them."""

    accelerator: Any
    engine: Any                     # the run's rollout engine (it holds the current policy's weights)
    prompts: list                   # the first eval.max_prompts rows of data.eval, the same at every evaluation
    rewards: Any                    # rlkit.rewards.RewardManager
    tokenizer: Any
    params: SamplingParams          # eval.temperature (greedy by default), eval.max_new_tokens
    seed: int = 0
    runner: Any = None              # rlkit.environments.runner.EpisodeRunner for a multi-turn environment

    def __call__(self) -> dict[str, float]:
        """``eval/*`` metrics (:func:`evaluate`); {} when the recipe has no ``data.eval``."""
        if not self.prompts:
            return {}
        return evaluate(self.accelerator, self.engine, self.prompts, self.rewards, self.tokenizer, self.params,
                        seed=self.seed, runner=self.runner)


def evaluate(accelerator, engine, prompts: list, rewards, tokenizer, params: SamplingParams, *,
             seed: int = 0, runner=None) -> dict[str, float]:
    """Held-out metrics; with an episode ``runner`` (multi-turn environment) each prompt is one episode and the
    tool-call rate is reported too (``eval/tool_calls_mean``)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = prompts[rank::world]
    totals = {"n": 0.0, "success": 0.0, "reward": 0.0, "length": 0.0, "truncated": 0.0, "scored": 0.0,
              "tool_calls": 0.0, "tool_episodes": 0.0}
    if mine:
        seeds = [completion_seed(seed, -1, p.index, 0, salt=1) for p in mine]
        comps, _, result, _ = generate_and_score(engine, runner, rewards, tokenizer, mine, seeds, params)
        episodes = [c.episode for c in comps if c.episode is not None]
        totals.update(tool_calls=float(sum(e.stats.calls for e in episodes)),
                      tool_episodes=float(sum(e.stats.calls > 0 for e in episodes)))
        success = torch.where(torch.isnan(result.success), (result.rewards > 0).float(), result.success)   # [n]
        scored = ~torch.isnan(result.rewards)                                                               # [n]
        totals.update(n=float(len(mine)), success=float(torch.nan_to_num(success).sum()),
                      reward=float(result.rewards[scored].sum()), scored=float(scored.sum()),
                      length=float(sum(sum(c.model_mask) if c.model_mask else len(c.token_ids) for c in comps)),
                      truncated=float(sum(c.finish_reason == FINISH_LENGTH for c in comps)))
    totals = sum_over_processes(accelerator, totals)
    n = max(totals["n"], 1.0)
    return {"eval/accuracy": totals["success"] / n,
            "eval/reward": totals["reward"] / totals["scored"] if totals["scored"] else math.nan,
            "eval/length_mean": totals["length"] / n, "eval/truncated_frac": totals["truncated"] / n,
            "eval/num_prompts": totals["n"],
            **({"eval/tool_calls_mean": totals["tool_calls"] / n, "eval/tool_use_frac": totals["tool_episodes"] / n}
               if runner is not None else {})}
