"""One step's rollout phase: sampler rounds -> engine.generate -> rewards -> sampler.finalize -> RolloutBatch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rlkit.batch import RolloutBatch
from rlkit.data import stack_columns
from rlkit.ops import right_pad
from rlkit.rollout import FINISH_LENGTH, RolloutEngine, SamplingParams, completion_seed
from rlkit.samplers import RolloutPool, Sampler


@dataclass
class RolloutContext:
    engine: RolloutEngine
    sampler: Sampler
    rewards: object            # rlkit.rewards.RewardManager
    tokenizer: object
    params: SamplingParams
    group_size: int
    seed: int
    max_rounds: int = 64       # safety net against a sampler that never stops


def _run_round(ctx: RolloutContext, pool: RolloutPool, counts: list[int], group_ids: list[int], step: int,
               timing: dict[str, float], reward_stats: dict[str, float]) -> int:
    have = pool.counts().tolist()
    req_prompt, req_ids, req_seeds = [], [], []
    for p, c in enumerate(counts):
        for j in range(c):
            req_prompt.append(p)
            req_ids.append(pool.prompts[p].prompt_ids)
            req_seeds.append(completion_seed(ctx.seed, step, group_ids[p], have[p] + j))
    if not req_prompt:
        return 0
    t0 = time.perf_counter()
    completions = ctx.engine.generate(req_ids, req_seeds, ctx.params)
    t1 = time.perf_counter()
    texts = ctx.tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
    prompts = [pool.prompts[p] for p in req_prompt]
    columns = stack_columns(prompts)
    result = ctx.rewards.score([pr.prompt for pr in prompts], texts, columns,
                               completion_ids=[c.token_ids for c in completions])
    timing["generate"] += t1 - t0
    timing["reward"] += time.perf_counter() - t1
    round_no = max(pool.round_index, default=-1) + 1
    pool.prompt_index += req_prompt
    pool.completions += completions
    pool.round_index += [round_no] * len(req_prompt)
    pool.rewards += result.rewards.tolist()
    pool.success += result.success.tolist()
    pool.components += result.components.tolist()
    pool.completion_texts += texts
    for k, v in result.metrics.items():  # counts add up over rounds; means are weighted by rows
        weight = len(req_prompt) if k.endswith("/mean") else 1
        reward_stats[k] = reward_stats.get(k, 0.0) + v * weight
    return len(req_prompt)


def collect_rollouts(ctx: RolloutContext, prompts: list, group_ids: list[int], step: int,
                     pad_id: int) -> tuple[RolloutBatch, dict[str, float]]:
    """Generate and score completions for ``prompts`` (this process's share) until the sampler is done."""
    pool = RolloutPool(prompts=prompts)
    timing, reward_stats = {"generate": 0.0, "reward": 0.0}, {}
    ctx.sampler.begin(step)
    counts, rounds, generated = ctx.sampler.allocate(prompts, ctx.group_size), 0, 0
    while counts and any(c > 0 for c in counts):
        if rounds >= ctx.max_rounds:
            raise RuntimeError(f"sampler asked for more than {ctx.max_rounds} rollout rounds in one step")
        generated += _run_round(ctx, pool, counts, group_ids, step, timing, reward_stats)
        rounds += 1
        counts = ctx.sampler.next_round(pool)
    rows = ctx.sampler.finalize(pool)
    if not rows:
        raise RuntimeError("the sampler kept no completion for this step; nothing to train on")
    batch = build_batch(pool, rows, group_ids, pad_id, ctx.sampler.pool_stats(pool))
    metrics = {"rollout/generated": float(generated), "rollout/rounds": float(rounds),
               "time/generate": timing["generate"], "time/reward": timing["reward"]}
    metrics.update({f"reward/{k}": v / (generated if k.endswith("/mean") else 1) for k, v in reward_stats.items()})
    metrics.update({f"sampler/{k}": v for k, v in ctx.sampler.step_metrics().items()})
    return batch, metrics


def build_batch(pool: RolloutPool, rows: list[int], group_ids: list[int], pad_id: int,
                pool_stats: torch.Tensor | None = None) -> RolloutBatch:
    """The training batch from pool ``rows``; ``pool_stats`` [P, 2] (mean, std per prompt) become pool_mean/std."""
    comps = [pool.completions[r] for r in rows]
    n = len(rows)
    response_ids, response_mask = right_pad([c.token_ids for c in comps], pad_id)                  # [N, T] x2
    rollout_logprobs, _ = right_pad([c.logprobs for c in comps], 0.0, dtype=torch.float32)         # [N, T]
    prompts = [pool.prompts[pool.prompt_index[r]] for r in rows]
    rewards = torch.tensor([pool.rewards[r] for r in rows], dtype=torch.float32)          # [N]
    which = torch.tensor([pool.prompt_index[r] for r in rows], dtype=torch.long)          # [N] prompt of the pool
    if pool_stats is not None and tuple(pool_stats.shape) != (len(pool.prompts), 2):
        raise ValueError(f"sampler pool_stats has shape {tuple(pool_stats.shape)}; expected ({len(pool.prompts)}, 2)"
                         " = (mean, std) per prompt of the pool")
    stats = pool_stats.float()[which] if pool_stats is not None else None                # [N, 2]
    return RolloutBatch(
        prompt_ids=[p.prompt_ids for p in prompts], response_ids=response_ids, response_mask=response_mask,
        rollout_logprobs=rollout_logprobs,
        truncated=torch.tensor([c.finish_reason == FINISH_LENGTH for c in comps]),
        group_ids=torch.tensor([group_ids[pool.prompt_index[r]] for r in rows], dtype=torch.long),
        rewards=rewards.clone(), raw_rewards=rewards,
        dataset_index=torch.tensor([p.index for p in prompts], dtype=torch.long),
        pool_mean=stats[:, 0] if stats is not None else None, pool_std=stats[:, 1] if stats is not None else None,
        success=torch.tensor([pool.success[r] for r in rows], dtype=torch.float32),
        reward_components=torch.tensor([pool.components[r] for r in rows], dtype=torch.float32).reshape(n, -1),
        prompts=[p.prompt for p in prompts], completions=[pool.completion_texts[r] for r in rows],
        columns=stack_columns(prompts),
    )


def rollout_metrics(batch: RolloutBatch) -> dict[str, float]:
    raw = batch.raw_rewards if batch.raw_rewards is not None else batch.rewards
    ok = ~torch.isnan(raw)
    succ = batch.success[~torch.isnan(batch.success)]
    lengths = batch.lengths.float()
    return {
        "reward/mean": raw[ok].mean().item() if ok.any() else math.nan,
        "reward/std": raw[ok].std().item() if ok.sum() > 1 else 0.0,
        "reward/success": succ.mean().item() if len(succ) else math.nan,
        "reward/unscorable_frac": (~ok).float().mean().item(),
        "rollout/completions": float(len(batch)),
        "rollout/length_mean": lengths.mean().item(),
        "rollout/length_max": lengths.max().item(),
        "rollout/truncated_frac": batch.truncated.float().mean().item(),
    }
