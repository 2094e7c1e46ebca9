"""Atomic checkpoints: accelerate state (model, optimizer, scheduler, RNG of every process) + trainer state.

Layout: ``<output_dir>/checkpoints/step_000010/`` holding accelerate's files and ``trainer_state.pt``
(step, data position, sampler and plug-in state), plus, with ``rollout.max_staleness > 0``, one
``rollouts_rank{R}.pt`` per process: the batches it already generated for steps not trained yet (its own share;
rlkit/rollout/prefetch.py). A checkpoint is written to ``step_000010.tmp`` and renamed only once complete (every
process's files in it), so an interrupted save never leaves a half checkpoint that ``resume: auto`` would pick;
pruning (``keep``) removes whole directories.

``trainer_state.pt`` and ``rollouts_rank{R}.pt`` are pickles (a RolloutBatch holds tensors, lists, episode records),
read with ``torch.load(weights_only=False)``: load only checkpoints you (your runs) wrote.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
             and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """'never' -> None; 'auto' -> latest complete checkpoint or None; otherwise an explicit path."""
    if resume == "never":
        return None
    if resume == "auto":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"train.resume '{resume}' is not a checkpoint directory (no trainer_state.pt); "
                                f"use 'auto', 'never' or a path like {checkpoint_dir(output_dir)}/step_000010")
    return path


def rollouts_file(path: Path, rank: int) -> Path:
    return path / f"rollouts_rank{rank}.pt"


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict[str, Any], keep: int,
                    rollouts: Any = None) -> Path:
    """Write checkpoint ``step`` atomically; ``rollouts`` (not None) = this process's generated batches."""
    root = checkpoint_dir(output_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if rollouts is not None:
        torch.save(rollouts, rollouts_file(tmp, accelerator.process_index))
        accelerator.wait_for_everyone()   # every share is in tmp before it becomes the checkpoint
    if accelerator.is_main_process:
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    accelerator.load_state(str(path))
    return torch.load(path / "trainer_state.pt", weights_only=False)


def load_rollouts(accelerator, path: Path) -> Any | None:
    """This process's generated batches saved in checkpoint ``path`` (None if it holds none)."""
    file = rollouts_file(path, accelerator.process_index)
    return torch.load(file, weights_only=False, map_location="cpu") if file.is_file() else None
