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
from dataclasses import dataclass, field

import torch

from rlkit.batch import RolloutBatch
from rlkit.critic import Critic, NoCritic, no_sync_all
from rlkit.dist import gather_lists, sum_over_processes
from rlkit.forward import ForwardSpec, response_logprobs
from rlkit.plugin_api import Aggregation, Loss, MicroBatch


class NonFiniteLossError(RuntimeError):
    """Raised when losses/gradients stay non-finite for more than train.max_nan_steps optimizer steps."""


@dataclass(frozen=True)
class UpdateSchedule:
    """How one rollout batch is trained on (from the recipe's ``train`` section)."""

    epochs: int = 1                      # passes over the batch
    mini_batches: int = 1                # optimizer steps per pass
    seed: int = 0                        # mini-batch membership permutation
    max_grad_norm: float | None = 1.0    # None: no clipping
    max_len: int = 1024                  # model-token bound of one sequence (aggregation plans that need it)
    max_nan_steps: int = 0               # consecutive non-finite optimizer steps tolerated before stopping


@dataclass
class Updater:
    """The policy's update side of a session: what :func:`policy_update` trains with, plus its one piece of state,
    ``nan_steps`` (consecutive optimizer steps skipped for a non-finite gradient norm), which is checkpointed so
    that a resumed run stops at the same step an uninterrupted one would."""

    accelerator: object
    model: object                          # prepared (DDP-wrapped when distributed)
    spec: ForwardSpec
    optimizer: object
    scheduler: object
    losses: list[Loss]
    aggregation: Aggregation
    schedule: UpdateSchedule
    critic: Critic | NoCritic = field(default_factory=NoCritic)   # a Critic when a plug-in needs values
    nan_steps: int = 0

    @property
    def entropy_grad(self) -> bool:
        """Some loss differentiates the entropy (``needs_entropy_grad``, e.g. the entropy bonus)."""
        return any(getattr(loss, "needs_entropy_grad", False) for loss in self.losses)

    def state_dict(self) -> dict[str, int]:
        return {"nan_steps": self.nan_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.nan_steps = int(state.get("nan_steps", 0))   # checkpoints from before it was saved: 0


def minibatch_assignment(global_offset: int, local_n: int, global_n: int, mini_batches: int,
                         seed: int, step: int, epoch: int) -> torch.Tensor:
    """[local_n] long: mini-batch index of each local row, from a permutation of global indices."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + epoch)
    perm = torch.randperm(global_n, generator=gen)                                        # [N_global]
    return perm[global_offset:global_offset + local_n] % mini_batches                    # [n_local]


def _plan_local(up: Updater, rows: RolloutBatch) -> tuple[torch.Tensor, float]:
    lengths = (rows.token_weights > 0).sum(-1)                                            # [n] long
    per_rank_len = gather_lists(up.accelerator, lengths.tolist())
    per_rank_gid = gather_lists(up.accelerator, rows.group_ids.tolist())
    plan = up.aggregation.plan(torch.tensor(sum(per_rank_len, []), dtype=torch.long),
                                torch.tensor(sum(per_rank_gid, []), dtype=torch.long), up.schedule.max_len)
    start = sum(len(v) for v in per_rank_len[:up.accelerator.process_index])
    return plan.coef[start:start + len(rows)].float(), float(plan.normalizer)             # [n], Z


def _micro_step(up: Updater, rows: RolloutBatch, coef: torch.Tensor, Z: float, sync: bool,
                metric_sums: dict[str, float], record: bool = True) -> None:
    """One forward/backward of ``rows``. ``record=False``: a zero-weight stand-in call (a process with fewer
    micro-batches than another keeps the backward calls equal); it adds the same metric keys, with weight 0."""
    acc, device = up.accelerator, up.accelerator.device
    models = [up.model, *up.critic.modules]
    sync_ctx = contextlib.nullcontext() if sync else no_sync_all(acc, models)
    with sync_ctx:
        with acc.autocast():
            logprobs, entropy = response_logprobs(up.model, rows, up.spec, with_entropy=True,
                                                  entropy_grad=up.entropy_grad)            # [n, T], [n, T]
            values = up.critic.values(up.model, rows, up.spec)                           # [n, T] | None
        rows = rows.to(device)
        micro = MicroBatch(batch=rows, logprobs=logprobs.float(), entropy=entropy, values=values)
        token_loss = torch.zeros_like(micro.logprobs)                                     # [n, T]
        weights = rows.token_weights.float()                                              # [n, T]
        scale = 1.0 if record else 0.0
        for loss_fn in up.losses:
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


def _optimizer_step(up: Updater, freeze_policy: bool = False) -> tuple[float, bool]:
    """Clip and apply the policy's gradients (dropped while ``freeze_policy``: critic warm-up)."""
    acc = up.accelerator
    if freeze_policy:
        up.optimizer.zero_grad(set_to_none=True)
        return 0.0, True
    params = [p for p in up.model.parameters() if p.requires_grad]
    if up.schedule.max_grad_norm is not None:
        norm = acc.clip_grad_norm_(params, up.schedule.max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    norm = float(norm)
    if not math.isfinite(norm):
        up.optimizer.zero_grad(set_to_none=True)
        up.nan_steps += 1
        if up.nan_steps > up.schedule.max_nan_steps:
            raise NonFiniteLossError(
                f"non-finite gradient norm ({norm}) in {up.nan_steps} consecutive optimizer step(s) "
                f"(train.max_nan_steps={up.schedule.max_nan_steps}); the update was skipped and the run stopped. "
                "Check rewards/advantages for NaN/inf, lower train.lr, or set train.mixed_precision=no.")
        return norm, False
    up.nan_steps = 0
    up.optimizer.step()
    up.scheduler.step()
    up.optimizer.zero_grad(set_to_none=True)
    return norm, True


def policy_update(up: Updater, batch: RolloutBatch, step: int) -> dict[str, float]:
    """Run every optimizer step for this rollout batch; returns averaged metrics."""
    acc = up.accelerator
    sizes = gather_lists(acc, [len(batch)])
    global_n, offset = sum(s[0] for s in sizes), sum(s[0] for s in sizes[:acc.process_index])
    sums: dict[str, float] = {}
    norms, skipped, critic_norms = [], 0, []
    freeze = step < up.critic.warmup_steps   # critic warm-up: only the critic learns (NoCritic: 0 steps)
    sched = up.schedule
    for epoch in range(sched.epochs):
        assign = minibatch_assignment(offset, len(batch), global_n, sched.mini_batches, sched.seed, step, epoch)
        for j in range(sched.mini_batches):
            rows = batch.select(torch.nonzero(assign == j).squeeze(-1))
            coef, Z = _plan_local(up, rows)
            active = torch.nonzero(rows.token_weights.sum(-1) > 0).squeeze(-1)   # rows a selection dropped add 0
            rows, coef = rows.select(active), coef[active]                      # to loss and gradient: skip them
            for loss_fn in up.losses:                                          # mini-batch statistics (collective)
                loss_fn.prepare(rows, acc)
            groups = up.spec.micro_batches(rows)                               # row indices per micro-batch
            counts = gather_lists(acc, [max(1, len(groups))])
            n_micro_all = max(c[0] for c in counts)   # every process does the same number of backward calls
            for m in range(n_micro_all):
                idx = groups[m] if m < len(groups) else torch.zeros(0, dtype=torch.long)
                part = rows.select(idx) if len(idx) else batch.select(torch.tensor([0]))
                part_coef = coef[idx] if len(idx) else torch.zeros(1)
                _micro_step(up, part, part_coef, Z, sync=(m == n_micro_all - 1), metric_sums=sums,
                            record=bool(len(idx)))
            norm, ok = _optimizer_step(up, freeze_policy=freeze)
            norms.append(norm)
            skipped += 0 if ok else 1
            critic_norms.append(up.critic.step()[0])
    # token-weighted means over ALL processes' tokens (sums first, then divide): equal to the one-process numbers,
    # where a mean of per-process means would not be (processes hold different token counts)
    sums = sum_over_processes(acc, sums)
    tokens = max(sums.pop("_tokens", 0.0), 1e-9)
    ent_tokens = max(sums.pop("_ent_tokens", 0.0), 1e-9)
    out = {f"loss/{k}": v / tokens for k, v in sums.items() if not k.startswith("_") and k != "entropy"}
    out["loss/entropy"] = sums.get("entropy", 0.0) / ent_tokens
    out["loss/total"] = sums.get("_loss", 0.0) / (sched.epochs * sched.mini_batches)
    out["train/grad_norm"] = sum(norms) / len(norms)
    out["train/skipped_steps"] = float(skipped)
    out["train/lr"] = up.scheduler.get_last_lr()[0]
    out |= up.critic.metrics(critic_norms, freeze)
    return out
