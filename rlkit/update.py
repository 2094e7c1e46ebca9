"""Policy update for one rollout batch: epochs x mini-batches x micro-batches, aggregation planned globally.

Loss of one optimizer step (mini-batch ``B_j`` over *all* processes):

    L_j = sum_{i in B_j} coef_i * sum_t token_weights[i,t] * loss[i,t] / Z_j

with ``(coef, Z_j) = aggregation.plan(lengths of B_j, ...)`` computed on the gathered global lengths. Each process
back-propagates ``world_size * (its share of L_j)`` per micro-batch, summed without averaging over micro-batches;
DDP's gradient average over processes then yields exactly grad L_j -- independent of micro-batch size, gradient
accumulation and world size. Mini-batch membership is a seeded permutation of *global* completion indices, so the
same completions form mini-batch j whatever the world size. Rows without any trained token (dropped by a
selection plug-in, or empty) are planned with the others but skip the forward/backward: they add exactly 0.

Micro-batches are groups of rows of at most ``train.max_tokens_per_micro`` tokens (by default ``auto``:
``micro_batch_size`` x the mini-batch's longest row, so never wider than a fixed micro-batch), or with
``max_tokens_per_micro: null`` ``micro_batch_size`` consecutive rows. Token-budget groups are packed first-fit
decreasing into one padding-free row each, or, with ``train.pack_sequences`` off (the default for sdpa/eager
attention), right-padded rows sorted by length. Since row i's contribution
``coef_i * sum_t w*loss / Z`` does not depend on which rows share its micro-batch, the grouping changes only
float rounding, never the loss. Every process runs the same number of backward calls (the maximum over
processes; a process with fewer groups adds zero-weight ones), so DDP's collectives line up.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from rlkit.batch import RolloutBatch
from rlkit.critic import no_sync_all
from rlkit.dist import gather_lists, sum_over_processes
from rlkit.forward import micro_batch_groups, response_logprobs
from rlkit.plugin_api import Aggregation, Loss, MicroBatch


class NonFiniteLossError(RuntimeError):
    """Raised when losses/gradients stay non-finite for more than train.max_nan_steps optimizer steps."""


@dataclass
class UpdateContext:
    accelerator: object
    model: object
    optimizer: object
    scheduler: object
    losses: list[Loss]
    aggregation: Aggregation
    pad_id: int
    temperature: float
    micro_batch_size: int
    epochs: int
    mini_batches: int
    max_grad_norm: float | None
    max_len: int
    seed: int
    max_nan_steps: int
    critic: object = None      # rlkit.critic.Critic when a plug-in needs values
    nan_steps: int = 0
    logprob_chunk_tokens: object = "auto"   # train.logprob_chunk_tokens: "auto" | int | 0/None (full logits)
    max_tokens_per_micro: object = None  # train.max_tokens_per_micro: "auto" | int budget | None = micro_batch_size rows
    pack_sequences: bool = True              # resolved train.pack_sequences: one padding-free row per micro-batch

    @property
    def entropy_grad(self) -> bool:
        """Some loss differentiates the entropy (``needs_entropy_grad``, e.g. the entropy bonus)."""
        return any(getattr(loss, "needs_entropy_grad", False) for loss in self.losses)


def minibatch_assignment(global_offset: int, local_n: int, global_n: int, mini_batches: int,
                         seed: int, step: int, epoch: int) -> torch.Tensor:
    """[local_n] long: mini-batch index of each local row, from a permutation of global indices."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + epoch)
    perm = torch.randperm(global_n, generator=gen)                                        # [N_global]
    return perm[global_offset:global_offset + local_n] % mini_batches                    # [n_local]


def _plan_local(ctx: UpdateContext, rows: RolloutBatch) -> tuple[torch.Tensor, float]:
    lengths = (rows.token_weights > 0).sum(-1)                                            # [n] long
    per_rank_len = gather_lists(ctx.accelerator, lengths.tolist())
    per_rank_gid = gather_lists(ctx.accelerator, rows.group_ids.tolist())
    plan = ctx.aggregation.plan(torch.tensor(sum(per_rank_len, []), dtype=torch.long),
                                torch.tensor(sum(per_rank_gid, []), dtype=torch.long), ctx.max_len)
    start = sum(len(v) for v in per_rank_len[:ctx.accelerator.process_index])
    return plan.coef[start:start + len(rows)].float(), float(plan.normalizer)             # [n], Z


def _micro_step(ctx: UpdateContext, rows: RolloutBatch, coef: torch.Tensor, Z: float, sync: bool,
                metric_sums: dict[str, float], record: bool = True) -> None:
    """One forward/backward of ``rows``. ``record=False``: a zero-weight stand-in call (a process with fewer
    micro-batches than another keeps the backward calls equal); it adds the same metric keys, with weight 0."""
    acc, device = ctx.accelerator, ctx.accelerator.device
    models = [ctx.model] + ([ctx.critic.module] if ctx.critic is not None else [])
    sync_ctx = contextlib.nullcontext() if sync else no_sync_all(acc, models)
    with sync_ctx:
        with acc.autocast():
            logprobs, entropy = response_logprobs(
                ctx.model, rows, pad_id=ctx.pad_id, temperature=ctx.temperature, with_entropy=True,
                chunk_tokens=ctx.logprob_chunk_tokens, entropy_grad=ctx.entropy_grad,
                packed=ctx.max_tokens_per_micro is not None and ctx.pack_sequences)      # [n, T], [n, T]
            values = ctx.critic.values(ctx.model, rows, pad_id=ctx.pad_id) if ctx.critic is not None else None
        rows = rows.to(device)
        micro = MicroBatch(batch=rows, logprobs=logprobs.float(), entropy=entropy, values=values)
        token_loss = torch.zeros_like(micro.logprobs)                                     # [n, T]
        weights = rows.token_weights.float()                                              # [n, T]
        scale = 1.0 if record else 0.0
        for loss_fn in ctx.losses:
            loss_t, metrics = loss_fn(micro)
            token_loss = token_loss + loss_t
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v) * float(weights.sum()) * scale
        seq_loss = (token_loss * weights).sum(-1)                                         # [n]
        loss = (coef.to(device) * seq_loss).sum() / Z                                     # []
        acc.backward(loss * acc.num_processes)
    metric_sums["_loss"] = metric_sums.get("_loss", 0.0) + loss.item()
    metric_sums["_tokens"] = metric_sums.get("_tokens", 0.0) + float(weights.sum()) * scale
    ent_mask = rows.response_mask.float() * scale                                         # [n, T]
    metric_sums["entropy"] = metric_sums.get("entropy", 0.0) + float((entropy.detach().float() * ent_mask).sum())
    metric_sums["_ent_tokens"] = metric_sums.get("_ent_tokens", 0.0) + float(ent_mask.sum())


def _optimizer_step(ctx: UpdateContext, freeze_policy: bool = False) -> tuple[float, bool]:
    """Clip and apply the policy's gradients (dropped while ``freeze_policy``: critic warm-up)."""
    acc = ctx.accelerator
    if freeze_policy:
        ctx.optimizer.zero_grad(set_to_none=True)
        return 0.0, True
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if ctx.max_grad_norm is not None:
        norm = acc.clip_grad_norm_(params, ctx.max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    norm = float(norm)
    if not math.isfinite(norm):
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.nan_steps += 1
        if ctx.nan_steps > ctx.max_nan_steps:
            raise NonFiniteLossError(
                f"non-finite gradient norm ({norm}) in {ctx.nan_steps} consecutive optimizer step(s) "
                f"(train.max_nan_steps={ctx.max_nan_steps}); the update was skipped and the run stopped. "
                "Check rewards/advantages for NaN/inf, lower train.lr, or set train.mixed_precision=no.")
        return norm, False
    ctx.nan_steps = 0
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return norm, True


def policy_update(ctx: UpdateContext, batch: RolloutBatch, step: int) -> dict[str, float]:
    """Run every optimizer step for this rollout batch; returns averaged metrics."""
    acc = ctx.accelerator
    sizes = gather_lists(acc, [len(batch)])
    global_n, offset = sum(s[0] for s in sizes), sum(s[0] for s in sizes[:acc.process_index])
    sums: dict[str, float] = {}
    norms, skipped, critic_norms = [], 0, []
    freeze = ctx.critic is not None and step < ctx.critic.warmup_steps
    for epoch in range(ctx.epochs):
        assign = minibatch_assignment(offset, len(batch), global_n, ctx.mini_batches, ctx.seed, step, epoch)
        for j in range(ctx.mini_batches):
            rows = batch.select(torch.nonzero(assign == j).squeeze(-1))
            coef, Z = _plan_local(ctx, rows)
            active = torch.nonzero(rows.token_weights.sum(-1) > 0).squeeze(-1)   # rows a selection dropped add 0
            rows, coef = rows.select(active), coef[active]                      # to loss and gradient: skip them
            for loss_fn in ctx.losses:                                          # mini-batch statistics (collective)
                loss_fn.prepare(rows, acc)
            groups = micro_batch_groups(rows, ctx.micro_batch_size, ctx.max_tokens_per_micro,
                                        ctx.pack_sequences)                     # row indices per micro-batch
            counts = gather_lists(acc, [max(1, len(groups))])
            n_micro_all = max(c[0] for c in counts)   # every process does the same number of backward calls
            for m in range(n_micro_all):
                idx = groups[m] if m < len(groups) else torch.zeros(0, dtype=torch.long)
                part = rows.select(idx) if len(idx) else batch.select(torch.tensor([0]))
                part_coef = coef[idx] if len(idx) else torch.zeros(1)
                _micro_step(ctx, part, part_coef, Z, sync=(m == n_micro_all - 1), metric_sums=sums,
                            record=bool(len(idx)))
            norm, ok = _optimizer_step(ctx, freeze_policy=freeze)
            norms.append(norm)
            skipped += 0 if ok else 1
            if ctx.critic is not None:
                critic_norms.append(ctx.critic.step()[0])
    # token-weighted means over ALL processes' tokens (sums first, then divide): equal to the one-process numbers,
    # where a mean of per-process means would not be (processes hold different token counts)
    sums = sum_over_processes(acc, sums)
    tokens = max(sums.pop("_tokens", 0.0), 1e-9)
    ent_tokens = max(sums.pop("_ent_tokens", 0.0), 1e-9)
    out = {f"loss/{k}": v / tokens for k, v in sums.items() if not k.startswith("_") and k != "entropy"}
    out["loss/entropy"] = sums.get("entropy", 0.0) / ent_tokens
    out["loss/total"] = sums.get("_loss", 0.0) / (ctx.epochs * ctx.mini_batches)
    out["train/grad_norm"] = sum(norms) / len(norms)
    out["train/skipped_steps"] = float(skipped)
    out["train/lr"] = ctx.scheduler.get_last_lr()[0]
    if ctx.critic is not None:
        out["critic/grad_norm"] = sum(critic_norms) / len(critic_norms)
        out["critic/policy_frozen"] = float(freeze)
    return out
