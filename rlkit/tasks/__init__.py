"""Synthetic tasks with verifiable answers, written as local jsonl splits (``rlkit make-data NAME DIR``).

Each task module provides ``write_splits(out_dir, **kw) -> dict[str, Path]``. Tasks: ``arithmetic`` (sums,
differences, products; optional carry-forgetting teacher) and ``tool_multiply`` (2-digit products with a
``multiply`` tool and a teacher that rarely calls it).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from rlkit.tasks import arithmetic, tool_multiply

TASKS: dict[str, ModuleType] = {"arithmetic": arithmetic, "tool_multiply": tool_multiply}


def write_task(name: str, out_dir: str | Path, **kw: Any) -> dict[str, Path]:
    """Write the splits of task ``name`` under ``out_dir``; return ``{split: path}``."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; available tasks: {', '.join(sorted(TASKS))}")
    accepted = inspect.signature(TASKS[name].write_splits).parameters
    bad = [k for k in kw if k not in accepted]
    if bad:
        raise ValueError(f"task '{name}' has no option {', '.join(bad)}; its options: "
                         f"{', '.join(k for k in accepted if k != 'out_dir')}")
    return TASKS[name].write_splits(out_dir, **kw)
