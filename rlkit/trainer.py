"""The RL loop, written once (DESIGN.md "One optimizer step"). It never tests a plug-in's name."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed

from rlkit.batch import RolloutBatch
from rlkit.checkpoint import load_checkpoint, load_rollouts, resolve_resume, save_checkpoint
from rlkit.config import RecipeConfig, dump_config
from rlkit.dist import check_launch, mean_over_processes
from rlkit.evaluation import Evaluator
from rlkit.reward_calls import RewardState
from rlkit.build import Plugins
from rlkit.critic import Critic, NoCritic
from rlkit.rollout.canary import Canary
from rlkit.rollout.partial import PartialPrefetcher
from rlkit.rollout.prefetch import RolloutPrefetcher
from rlkit.rollout import RolloutWorkerError
from rlkit.rollout.collect import RolloutContext, collect_rollouts, rollout_metrics
from rlkit.session import Session, build_session
from rlkit.console import Progress, format_eval_table, print_table, samples_table
from rlkit.run_logging import run_log
from rlkit.tracking import MetricsLogger
from rlkit.stopwatch import Stopwatch
from rlkit.update import Updater, policy_update

log = logging.getLogger("rlkit")


def _prefixed(kind: str, metrics: dict) -> dict[str, float]:
    return {f"{kind}/{k}": float(v) for k, v in metrics.items()}


def rollout_phase(s: Session, step: int, position: int) -> tuple[RolloutBatch, dict[str, float]]:
    """Prompts -> sampler rounds -> engine -> rewards -> RolloutBatch for ``step`` (this process's share)."""
    cfg, acc = s.cfg, s.accelerator
    draw = s.plugins.sampler.prompts_needed(cfg.train.prompts_per_step // acc.num_processes)
    first = position + acc.process_index * draw
    prompts = s.train_prompts.batch(first, draw)
    state = RewardState(global_step=step, max_steps=cfg.train.steps, epoch=position / max(len(s.train_prompts), 1))
    ctx = RolloutContext(s.engine, s.plugins.sampler, s.rewards, s.tokenizer, s.sampling, cfg.rollout.n,
                         cfg.train.seed, runner=s.runner, state=state)
    batch, metrics = collect_rollouts(ctx, prompts, list(range(first, first + draw)), step,
                                      s.tokenizer.pad_token_id)
    return batch, metrics | rollout_metrics(batch)


def prompts_drawn(sampler, prompts_per_step: int, world: int) -> int:
    """Prompts one step takes from the data stream over all ``world`` processes (the sampler may oversample)."""
    return sampler.prompts_needed(prompts_per_step // world) * world


def step_batch(s: Session, step: int, position: int,
               prefetch: RolloutPrefetcher) -> tuple[RolloutBatch, dict[str, float]]:
    """The batch ``step`` trains on: generated ahead of time (rlkit/rollout/prefetch.py), or now (staleness 0)."""
    ready = prefetch.take(step)
    if ready is None:
        batch, metrics = rollout_phase(s, step, position)
        metrics["rollout/staleness"] = 0.0
        return batch, metrics
    ready.metrics["rollout/staleness"] = float(step - ready.version)   # policy versions since generation
    return ready.batch, ready.metrics | token_staleness(ready.batch, s.engine.version)


def token_staleness(batch: RolloutBatch, now: int) -> dict[str, float]:
    """Per-token staleness of a batch trained while the engine holds version ``now`` (= the step: the engine counts
    syncs, and a resume sets its count to the checkpoint's step), from the versions that sampled each model token;
    ``partial_frac`` = completions sampled by more than one version."""
    if batch.token_versions is None:
        return {}
    sampled = batch.response_mask & (batch.token_versions >= 0)                          # [N, T]
    if not sampled.any():
        return {}
    age = (now - batch.token_versions)[sampled].float()                                  # [tokens]
    first = torch.where(sampled, batch.token_versions, batch.token_versions.max() + 1).min(dim=1).values   # [N]
    last = torch.where(sampled, batch.token_versions, -1).max(dim=1).values              # [N]
    return {"rollout/staleness_mean": age.mean().item(), "rollout/staleness_max": age.max().item(),
            "rollout/partial_frac": ((last > first) & sampled.any(dim=1)).float().mean().item()}


def rl_step(s: Session, step: int, position: int,
            prefetch: RolloutPrefetcher) -> tuple[dict[str, float], RolloutBatch]:
    """One step of DESIGN.md "One optimizer step": rollouts -> objective -> scoring -> advantages -> selection ->
    update -> sampler update. Each stage's seconds are logged as ``time/<stage>``."""
    p, watch = s.plugins, Stopwatch()
    with watch("rollout_wait"):
        batch, metrics = step_batch(s, step, position, prefetch)
    drawn = prompts_drawn(p.sampler, s.cfg.train.prompts_per_step, s.accelerator.num_processes)
    # step t's prompts start (t - step) steps of data after this step's
    if not prefetch.launch(step, lambda t: rollout_phase(s, t, position + (t - step) * drawn)):
        s.engine.release()     # nothing generates in the background: the engine may give its memory to training
    with watch("objective"):
        batch.rewards = p.objective(batch.raw_rewards, batch.group_ids)                   # [N]
    with watch("score"):
        metrics |= s.scorer(batch)
    with watch("advantage"):
        batch.advantages, adv_metrics = p.advantage(batch)                                # [N, T]
    with watch("selection"):
        batch.token_weights, sel_metrics = p.select(batch, progress=step / s.cfg.train.steps)  # [N, T]
    metrics |= _prefixed("advantage", adv_metrics) | _prefixed("selection", sel_metrics)
    with watch("train"):
        metrics |= policy_update(s.updater, batch, step)
    # the engine is idle before its weights change and the sampler updates (partial rollouts: deferred, in order)
    with watch("wait_prefetch"):
        metrics |= prefetch.sampler_update(lambda: _prefixed("sampler", p.sampler.update(batch, step)))
    return metrics | watch.metrics(), batch


def finish_step(s: Session, version: int, metrics: dict[str, float]) -> dict[str, float]:
    """After the step's update is counted: sync the engine to policy ``version`` and average the metrics.

    Kept out of :func:`rl_step` so that a failing sync (a lost rollout worker, a canary failure) happens after the
    step counter moved on: a checkpoint saved then matches the weights it holds."""
    t0 = time.perf_counter()
    metrics.update(_prefixed("rollout", sync_engine(s.engine, s.policy, s.canary, version)))
    metrics["time/sync"] = time.perf_counter() - t0
    metrics["time/step"] += metrics["time/sync"]
    return mean_over_processes(s.accelerator, metrics)


def sync_engine(engine, policy, canary: Canary, version: int) -> dict[str, float]:
    """Push the policy's weights to the rollout engine, then (every k-th sync) verify them with the canary."""
    out = engine.sync_weights(policy)
    if canary.due(version):
        out |= canary.check(engine, policy, version)
    return out


def _sample_rows(batch: RolloutBatch, k: int = 4) -> list[dict]:
    adv = batch.advantages[:, 0] if batch.advantages is not None else torch.zeros(len(batch))
    shown = [e.transcript() for e in batch.episodes] if batch.episodes else batch.completions
    logs = batch.reward_logs or [{}] * len(batch)            # rewards' log_extra columns
    return [{"prompt": batch.prompts[i], "completion": shown[i], "reward": float(batch.raw_rewards[i]),
             "success": float(batch.success[i]), "advantage": float(adv[i]), **logs[i]}
            for i in range(min(k, len(batch)))]


def _trainer_state(plugins: Plugins, updater: Updater, step: int, position: int) -> dict:
    """What a checkpoint holds besides the accelerator's state (models, optimizers, schedulers, RNGs)."""
    return {"step": step, "data_position": position, "updater": updater.state_dict(),
            "plugins": {name: plug.state_dict() for name, plug in plugins.all().items()}}


def _restore(s: Session, path: Path) -> tuple[int, int]:
    state = load_checkpoint(s.accelerator, path)
    for name, plug in s.plugins.all().items():
        plug.load_state_dict(state["plugins"].get(name, {}))
    s.updater.load_state_dict(state.get("updater", {}))   # absent in checkpoints written before it was saved
    return state["step"], state["data_position"]


def _save(s: Session, out_dir: Path, step: int, position: int, prefetch: RolloutPrefetcher) -> Path:
    """Checkpoint after ``step`` steps, with the batches already generated for later steps (max_staleness > 0)."""
    return save_checkpoint(s.accelerator, out_dir, step, _trainer_state(s.plugins, s.updater, step, position),
                           s.cfg.train.keep_checkpoints, rollouts=prefetch.saved(step, s.accelerator.num_processes))


def _resume(s: Session, ckpt: Path, prefetch: RolloutPrefetcher) -> tuple[int, int]:
    """Restore checkpoint ``ckpt``, sync the engine to it and take back the batches it had generated ahead."""
    step, position = _restore(s, ckpt)
    log.info("resumed from %s (step %d)", ckpt, step)
    s.engine.version = step - 1      # the engine's numbering is the policy's: this sync makes it version `step`
    s.engine.sync_weights(s.policy)  # the engine started from model.name_or_path, not the checkpoint
    kept = prefetch.restore(load_rollouts(s.accelerator, ckpt), step, s.accelerator.num_processes)
    if kept:
        log.info("resumed with the batches generated ahead for steps %s", kept)
    if prefetch.missing(step):
        log.warning("the checkpoint holds no generated batch for step(s) %s (saved with another train.steps, "
                    "rollout.max_staleness or number of processes): they are generated from policy version %d, so "
                    "this run differs from an uninterrupted one (rollout/staleness logs the truth)",
                    prefetch.missing(step), step)
    return step, position


def _eval(evaluator: Evaluator, step: int, logger: MetricsLogger, label: str) -> dict[str, float]:
    """Evaluate on the held-out prompts, log the metrics at ``step`` and print them (main process)."""
    result = evaluator()
    if result:
        logger.log(step, result)
        if evaluator.accelerator.is_main_process:
            print_table(format_eval_table(result, title=f"held-out evaluation ({label}, step {step})"))
    return result


def train(cfg: RecipeConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Run (or resume) the recipe; returns the last step's metrics plus eval/* before and after."""
    if accelerator is None:
        # AcceleratorState is a per-process singleton; clear its precision settings (not the process group) so
        # several runs in one Python process (notebooks, tests) can use different train.mixed_precision.
        AcceleratorState._reset_state(reset_partial_state=False)
    check_launch()
    acc = accelerator or Accelerator(mixed_precision=cfg.train.mixed_precision)
    check_launch(acc)
    set_seed(cfg.train.seed)
    with run_log(cfg.train.output_dir, acc.process_index):
        s = build_session(cfg, acc)
        try:
            return _run(s)
        finally:
            s.engine.close()   # e.g. tells rollout workers to drop this trainer's requests
            s.plugins.environment.close()   # tool worker processes
            s.rewards.close()               # reward worker processes


def _run(s: Session) -> dict[str, float]:
    cfg, acc = s.cfg, s.accelerator
    out_dir, t = Path(cfg.train.output_dir), cfg.train
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
        log.info("training on %d process(es) (%s, %s)", acc.num_processes, acc.distributed_type.value, acc.device)
    ckpt = resolve_resume(t.resume, out_dir)
    prefetch = (PartialPrefetcher if cfg.rollout.partial_rollouts else RolloutPrefetcher)(cfg.rollout.max_staleness,
                                                                                          t.steps)
    step, position = _resume(s, ckpt, prefetch) if ckpt else (0, 0)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           trackio=cfg.logging.trackio, enabled=acc.is_main_process)
    summary: dict[str, float] = {}
    if s.canary.every:  # the engine must start from the policy's weights too (e.g. after a resume)
        s.canary.check(s.engine, s.policy, version=0)
    if t.eval_at_start and step == 0:
        summary |= {f"before/{k}": v for k, v in _eval(s.evaluator, 0, logger, "before RL").items()}
    progress = Progress(t.steps, initial=step, enabled=acc.is_main_process)
    metrics: dict[str, float] = {}
    saved = step
    try:
        while step < t.steps:
            metrics, batch = rl_step(s, step, position, prefetch)
            step, position = step + 1, position + prompts_drawn(s.plugins.sampler, t.prompts_per_step,
                                                                acc.num_processes)
            metrics = finish_step(s, step, metrics)
            if step % t.log_every == 0 or step == t.steps:
                logger.log(step, metrics)
            progress.update(step, metrics)
            if t.sample_every and step % t.sample_every == 0 and acc.is_main_process:
                rows = _sample_rows(batch)
                logger.log_samples(step, rows)
                print_table(samples_table(rows, title=f"samples at step {step}",
                                          max_chars=320 if batch.episodes else 80))
            if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                prefetch.wait()      # partial rollouts: nothing generates during an evaluation
                _eval(s.evaluator, step, logger, "during RL")
            if (t.save_every and step % t.save_every == 0) or step == t.steps:
                _save(s, out_dir, step, position, prefetch)
                saved = step
    except (KeyboardInterrupt, RolloutWorkerError):
        _quiet_wait(prefetch)
        _on_interrupt(s, out_dir, step, position, saved, prefetch)
        raise
    finally:
        progress.close()
        prefetch.close()
    if t.eval_at_end:
        summary |= {f"after/{k}": v for k, v in _eval(s.evaluator, step, logger, "after RL").items()}
    export_final(acc, s.model, s.tokenizer, s.critic, out_dir / "final")
    logger.close()
    return metrics | summary


def _quiet_wait(prefetch: RolloutPrefetcher) -> None:
    try:
        prefetch.wait()
    except Exception as exc:  # the run is stopping anyway; its own error is the one to report
        log.warning("in-flight rollout failed while stopping: %s", exc)


def _on_interrupt(s: Session, out_dir: Path, step: int, position: int, saved: int,
                  prefetch: RolloutPrefetcher) -> None:
    """Ctrl-C / SIGTERM / every rollout worker lost: keep the finished steps. One process saves now; several keep the last checkpoint
    (a collective save could hang when processes were interrupted at different points)."""
    if step > saved and s.accelerator.num_processes == 1:
        path = _save(s, out_dir, step, position, prefetch)
        log.warning("interrupted after step %d: checkpoint saved to %s; run the same command again to resume "
                    "(train.resume=auto)", step, path)
    else:
        log.warning("interrupted after step %d; the last checkpoint is step %d in %s; run the same command again "
                    "to resume from it (train.resume=auto)", step, saved, out_dir / "checkpoints")


def export_final(accelerator, model, tokenizer, critic: Critic | NoCritic, path: Path) -> None:
    """The trained policy (a LoRA run: its adapter), tokenizer and critic under ``path`` (collective: all ranks)."""
    accelerator.wait_for_everyone()
    full = _gathered_state(accelerator, model)
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(model)
        policy.save_pretrained(path, safe_serialization=True, **({"state_dict": full} if full is not None else {}))
        tokenizer.save_pretrained(path)
        critic.save(path)   # the value model, for continuing PPO from this policy (NoCritic: nothing)
    accelerator.wait_for_everyone()


def _gathered_state(accelerator, model) -> dict | None:
    """Sharded training (FSDP, DeepSpeed): the full state dict, gathered by every rank (a collective) and held on
    rank 0 (DeepSpeed ZeRO-3 needs ``zero3_save_16bit_model: true``, as in launch/deepspeed_zero3.yaml). None when
    the policy holds full weights, which ``save_pretrained`` then reads itself."""
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    return accelerator.get_state_dict(model)
