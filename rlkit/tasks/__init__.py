"""Synthetic tasks with verifiable answers, written as local jsonl splits (``rlkit make-data NAME DIR``).

Each task module provides ``write_splits(out_dir, **kw) -> dict[str, Path]``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from rlkit.tasks import arithmetic

TASKS: dict[str, ModuleType] = {"arithmetic": arithmetic}


def write_task(name: str, out_dir: str | Path, **kw: Any) -> dict[str, Path]:
    """Write the splits of task ``name`` under ``out_dir``; return ``{split: path}``."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; available tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name].write_splits(out_dir, **kw)
