"""The batch arithmetic a recipe implies (printed by ``rlkit show``)."""

from __future__ import annotations

import math

from rlkit.config import RecipeConfig
from rlkit.plugins import load_builtins
from rlkit.registry import SAMPLERS


def batch_arithmetic(cfg: RecipeConfig, num_processes: int = 1) -> dict[str, object]:
    t, W = cfg.train, num_processes
    P, n = t.prompts_per_step, cfg.rollout.n
    N = P * n
    per_proc = N / W
    per_mini = per_proc / t.mini_batches
    micro = math.ceil(per_mini / t.micro_batch_size)
    notes = []
    if P % W:
        notes.append(f"prompts_per_step={P} is not divisible by {W} processes: the run will refuse to start")
    load_builtins()
    if not getattr(SAMPLERS.get(cfg.sampler.name), "fixed_group_size", False):
        notes.append(f"sampler '{cfg.sampler.name}' decides completions per prompt at run time; counts assume n={n}")
    return {
        "processes": W,
        "prompts per step": P,
        "completions per prompt (rollout.n)": n,
        "completions per step": N,
        "prompts per process": P / W,
        "completions per process": per_proc,
        "optimizer steps per rollout batch (epochs x mini_batches)": t.epochs * t.mini_batches,
        "completions per optimizer step (all processes)": N / t.mini_batches,
        "completions per optimizer step per process": per_mini,
        "micro-batches per optimizer step per process (grad accumulation)": micro,
        "completions per micro-batch": t.micro_batch_size,
        "total RL steps": t.steps,
        "total optimizer steps": t.steps * t.epochs * t.mini_batches,
        "total completions generated": N * t.steps,
        "notes": notes,
    }
