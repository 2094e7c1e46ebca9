"""Held-out evaluation during training: generate (greedy by default), score with the run's rewards, report.

Each process evaluates its slice of the prompts; counts are summed over processes. Accuracy is the mean of the
success signal (rewards that return {"reward", "success"}); prompts whose rewards report no success count by
``reward > 0``.
"""

from __future__ import annotations

import math

import torch

from rlkit.data import stack_columns
from rlkit.dist import sum_over_processes
from rlkit.rollout import FINISH_LENGTH, SamplingParams, completion_seed


def evaluate(accelerator, engine, prompts: list, rewards, tokenizer, params: SamplingParams, *,
             seed: int = 0) -> dict[str, float]:
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = prompts[rank::world]
    totals = {"n": 0.0, "success": 0.0, "reward": 0.0, "length": 0.0, "truncated": 0.0, "scored": 0.0}
    if mine:
        seeds = [completion_seed(seed, -1, p.index, 0, salt=1) for p in mine]
        comps = engine.generate([p.prompt_ids for p in mine], seeds, params)
        texts = tokenizer.batch_decode([c.token_ids for c in comps], skip_special_tokens=True)
        columns = stack_columns(mine)
        result = rewards.score([p.prompt for p in mine], texts, columns, completion_ids=[c.token_ids for c in comps])
        success = torch.where(torch.isnan(result.success), (result.rewards > 0).float(), result.success)   # [n]
        scored = ~torch.isnan(result.rewards)                                                               # [n]
        totals.update(n=float(len(mine)), success=float(torch.nan_to_num(success).sum()),
                      reward=float(result.rewards[scored].sum()), scored=float(scored.sum()),
                      length=float(sum(len(c.token_ids) for c in comps)),
                      truncated=float(sum(c.finish_reason == FINISH_LENGTH for c in comps)))
    totals = sum_over_processes(accelerator, totals)
    n = max(totals["n"], 1.0)
    return {"eval/accuracy": totals["success"] / n,
            "eval/reward": totals["reward"] / totals["scored"] if totals["scored"] else math.nan,
            "eval/length_mean": totals["length"] / n, "eval/truncated_frac": totals["truncated"] / n,
            "eval/num_prompts": totals["n"]}
