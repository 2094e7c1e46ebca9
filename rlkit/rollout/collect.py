"""One step's rollout phase: sampler rounds -> engine.generate -> rewards -> sampler.finalize -> RolloutBatch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from rlkit.batch import RolloutBatch
from rlkit.data import stack_columns
from rlkit.environments.canary import check_drift, enforce
from rlkit.environments.episode import EpisodeMetrics
from rlkit.environments.runner import EpisodeRunner
from rlkit.ops import right_pad
from rlkit.reward_calls import RewardState
from rlkit.rollout import FINISH_LENGTH, Completion, RolloutEngine, SamplingParams, completion_seed
from rlkit.samplers.base import RolloutPool, Sampler
from rlkit.samplers.dynamic import informative


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
    runner: EpisodeRunner | None = None   # multi-turn environments; None = single-turn completions
    state: RewardState | None = None      # training progress, for rewards that read ``trainer_state``


def generate_and_score(ctx_engine: RolloutEngine, runner: EpisodeRunner | None, rewards, tokenizer,
                       prompts: list, seeds: list[int], params: SamplingParams,
                       episode_metrics: EpisodeMetrics | None = None, state: RewardState | None = None):
    """Completions (or episodes) for ``prompts`` [one per seed] and their RewardResult; also used by evaluation.
    ``state`` is what rewards get as ``trainer_state``."""
    messages = None
    if runner is None:
        completions = ctx_engine.generate([p.prompt_ids for p in prompts], seeds, params)
        texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
        prompt_texts, external = [p.prompt for p in prompts], None
    else:
        completions = runner.run(ctx_engine, prompts, seeds, params, episode_metrics)
        texts = [c.episode.answer for c in completions]
        prompt_texts = [c.episode.prompt_text for c in completions]
        messages = [c.episode.completion_messages for c in completions]
        name = runner.env.reward_name
        external = {name: [c.episode.env_reward for c in completions]} if name else None
    t1 = time.perf_counter()
    # rewards see the model's own tokens only: an episode's tool outputs are context, not the policy's answer
    ids = [[t for t, m in zip(c.token_ids, c.model_mask or [True] * len(c.token_ids)) if m] for c in completions]
    result = rewards.score(prompt_texts, texts, stack_columns(prompts), completion_ids=ids,
                           **({"external": external} if external else {}),
                           raw_prompts=[p.raw_prompt for p in prompts], messages=messages, state=state)
    return completions, texts, result, time.perf_counter() - t1


def _run_round(ctx: RolloutContext, pool: RolloutPool, counts: list[int], group_ids: list[int], step: int,
               timing: dict[str, float], reward_stats: dict[str, float], episodes: EpisodeMetrics) -> int:
    """One sampler round: ``counts[p]`` more completions of pool prompt p, generated, scored, appended to the pool;
    returns how many were generated."""
    have = pool.counts().tolist()
    req_prompt, req_seeds = [], []
    # a completion's seed depends on (run seed, step, global prompt id, its index within that prompt) only, so a
    # later round continues the indices and the samples do not depend on batch layout, world size or resume
    for p, c in enumerate(counts):
        for j in range(c):
            req_prompt.append(p)
            req_seeds.append(completion_seed(ctx.seed, step, group_ids[p], have[p] + j))
    if not req_prompt:
        return 0
    t0 = time.perf_counter()
    prompts = [pool.prompts[p] for p in req_prompt]
    completions, texts, result, reward_s = generate_and_score(ctx.engine, ctx.runner, ctx.rewards, ctx.tokenizer,
                                                              prompts, req_seeds, ctx.params, episodes, ctx.state)
    timing["generate"] += time.perf_counter() - t0 - reward_s   # reward time is counted apart
    timing["reward"] += reward_s
    round_no = max(pool.round_index, default=-1) + 1
    pool.prompt_index += req_prompt
    pool.completions += completions
    pool.round_index += [round_no] * len(req_prompt)
    pool.rewards += result.rewards.tolist()
    pool.success += result.success.tolist()
    pool.components += result.components.tolist()
    pool.completion_texts += texts
    pool.reward_logs += [{k: v[i] for k, v in result.logged.items()} for i in range(len(texts))]
    for k, v in result.metrics.items():  # counts add up over rounds; means are weighted by rows
        weight = len(req_prompt) if k.endswith("/mean") else 1
        reward_stats[k] = reward_stats.get(k, 0.0) + v * weight
    return len(req_prompt)


def collect_rollouts(ctx: RolloutContext, prompts: list, group_ids: list[int], step: int,
                     pad_id: int) -> tuple[RolloutBatch, dict[str, float]]:
    """Generate and score completions for ``prompts`` (this process's share) until the sampler is done."""
    pool = RolloutPool(prompts=prompts)
    timing, reward_stats, episodes = {"generate": 0.0, "reward": 0.0}, {}, EpisodeMetrics()
    ctx.sampler.begin(step)
    counts, rounds, generated = ctx.sampler.allocate(prompts, ctx.group_size), 0, 0
    while counts and any(c > 0 for c in counts):
        if rounds >= ctx.max_rounds:
            raise RuntimeError(f"sampler asked for more than {ctx.max_rounds} rollout rounds in one step")
        generated += _run_round(ctx, pool, counts, group_ids, step, timing, reward_stats, episodes)
        rounds += 1
        counts = ctx.sampler.next_round(pool)
    rows = ctx.sampler.finalize(pool)   # pool rows to train on (e.g. DAPO drops zero-variance groups)
    if not rows:
        raise RuntimeError("the sampler kept no completion for this step; nothing to train on")
    batch = build_batch(pool, rows, group_ids, pad_id, ctx.sampler.pool_stats(pool))
    metrics = {"rollout/generated": float(generated), "rollout/rounds": float(rounds),
               "time/generate": timing["generate"], "time/reward": timing["reward"]}
    metrics.update({f"reward/{k}": v / (generated if k.endswith("/mean") else 1) for k, v in reward_stats.items()})
    metrics.update({f"sampler/{k}": v for k, v in ctx.sampler.step_metrics().items()})
    if ctx.runner is not None:
        metrics.update(environment_metrics(episodes))
        metrics.update(drift_metrics(ctx.runner, [pool.completions[r] for r in rows]))
    return batch, metrics


def environment_metrics(m: EpisodeMetrics) -> dict[str, float]:
    """``environment/*`` and ``time/environment`` of one rollout phase (every episode generated, kept or not)."""
    n, tokens = max(m.episodes, 1), max(m.model_tokens + m.env_tokens, 1)
    # time/generate: in the engine; time/environment: the rest of the episode loop (tool waits, rendering)
    return {"time/generate": m.generate_s, "environment/turns_mean": m.turns / n, "environment/tool_calls_mean": m.stats.calls / n,
            "environment/tool_errors": float(m.stats.errors), "environment/tool_timeouts": float(m.stats.timeouts),
            "environment/tool_seconds": m.stats.seconds, "environment/env_tokens_frac": m.env_tokens / tokens,
            "time/environment": m.environment_s}


def drift_metrics(runner: EpisodeRunner, completions: list[Completion]) -> dict[str, float]:
    """The tokenization canary over the first ``drift_check_episodes`` kept episodes; stops the run past the limit."""
    env = runner.env
    if not env.drift_check_episodes:
        return {}
    report = check_drift(runner.renderer, completions, env.drift_check_episodes)
    enforce(report, env.max_token_drift)
    return {"environment/token_drift": report.share}


def build_batch(pool: RolloutPool, rows: list[int], group_ids: list[int], pad_id: int,
                pool_stats: torch.Tensor | None = None) -> RolloutBatch:
    """The training batch from pool ``rows``; ``pool_stats`` [P, 2] (mean, std per prompt) become pool_mean/std."""
    comps = [pool.completions[r] for r in rows]
    n = len(rows)
    response_ids, token_mask = right_pad([c.token_ids for c in comps], pad_id)                     # [N, T] x2
    rollout_logprobs, _ = right_pad([c.logprobs for c in comps], 0.0, dtype=torch.float32)         # [N, T]
    multi_turn = any(c.model_mask is not None for c in comps)
    response_mask = token_mask
    if multi_turn:   # only the tokens the policy sampled are trained on; inserted ones stay context
        model_mask, _ = right_pad([c.model_mask or [True] * len(c.token_ids) for c in comps], False,
                                  dtype=torch.bool)                                                # [N, T]
        response_mask = model_mask & token_mask                                                    # [N, T]
    prompts = [pool.prompts[pool.prompt_index[r]] for r in rows]
    rewards = torch.tensor([pool.rewards[r] for r in rows], dtype=torch.float32)          # [N]
    which = torch.tensor([pool.prompt_index[r] for r in rows], dtype=torch.long)          # [N] prompt of the pool
    if pool_stats is not None and tuple(pool_stats.shape) != (len(pool.prompts), 2):
        raise ValueError(f"sampler pool_stats has shape {tuple(pool_stats.shape)}; expected ({len(pool.prompts)}, 2)"
                         " = (mean, std) per prompt of the pool")
    stats = pool_stats.float()[which] if pool_stats is not None else None                # [N, 2]
    versions = None
    if any(c.token_versions is not None for c in comps):
        versions, _ = right_pad([c.token_versions if c.token_versions is not None else [-1] * len(c.token_ids)
                                 for c in comps], -1, dtype=torch.long)                           # [N, T]
    return RolloutBatch(
        prompt_ids=[c.prompt_ids if c.prompt_ids is not None else p.prompt_ids for c, p in zip(comps, prompts)],
        response_ids=response_ids, response_mask=response_mask,
        token_mask=token_mask if multi_turn else None, token_versions=versions,
        episodes=[c.episode for c in comps] if multi_turn else [],
        rollout_logprobs=rollout_logprobs,
        truncated=torch.tensor([c.finish_reason == FINISH_LENGTH for c in comps]),
        group_ids=torch.tensor([group_ids[pool.prompt_index[r]] for r in rows], dtype=torch.long),
        rewards=rewards.clone(), raw_rewards=rewards,
        dataset_index=torch.tensor([p.index for p in prompts], dtype=torch.long),
        pool_mean=stats[:, 0] if stats is not None else None, pool_std=stats[:, 1] if stats is not None else None,
        success=torch.tensor([pool.success[r] for r in rows], dtype=torch.float32),
        reward_components=torch.tensor([pool.components[r] for r in rows], dtype=torch.float32).reshape(n, -1),
        prompts=[c.episode.prompt_text if c.episode is not None else p.prompt for c, p in zip(comps, prompts)],
        completions=[pool.completion_texts[r] for r in rows],
        columns=stack_columns(prompts),
        reward_logs=[pool.reward_logs[r] for r in rows] if pool.reward_logs else [],
    )


def zero_std_frac(group_ids: torch.Tensor, success: torch.Tensor, rewards: torch.Tensor) -> float:
    """Share of the groups (``group_ids`` [N]) whose success signal [N] -- the reward [N] where a group reports none --
    is constant (``informative``'s exact check; a group of one counts): their group-relative advantages are all 0.
    TRL logs the same quantity as ``frac_reward_zero_std``."""
    groups: dict[int, tuple[list[float], list[float]]] = {}
    for g, s, r in zip(group_ids.tolist(), success.tolist(), rewards.tolist()):
        values, fallback = groups.setdefault(g, ([], []))
        values.append(s)
        fallback.append(r)
    return sum(not informative(v, f) for v, f in groups.values()) / max(len(groups), 1)


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
        "reward/zero_std_frac": zero_std_frac(batch.group_ids, batch.success, raw),
        "rollout/completions": float(len(batch)),
        "rollout/length_mean": lengths.mean().item(),
        "rollout/length_max": lengths.max().item(),
        "rollout/truncated_frac": batch.truncated.float().mean().item(),
    }
