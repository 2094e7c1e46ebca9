"""Small collectives over accelerate: gather Python lists, average metric dicts. Work in 1-process runs too."""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def gather_lists(accelerator: Accelerator, values: list[Any]) -> list[list[Any]]:
    """Every process's list, in rank order, on every process."""
    if accelerator.num_processes == 1:
        return [list(values)]
    flat = gather_object([(accelerator.process_index, list(values))])
    return [v for _, v in sorted(flat, key=lambda pair: pair[0])]


def mean_over_processes(accelerator: Accelerator, metrics: dict[str, float],
                        weights: float = 1.0) -> dict[str, float]:
    """Weighted mean of each metric over processes (NaN entries are ignored)."""
    if accelerator.num_processes == 1 or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    ok = torch.isfinite(vals)                                                    # [K]
    num = torch.where(ok, vals * weights, torch.zeros_like(vals))                # [K]
    den = ok.double() * weights                                                  # [K]
    num, den = accelerator.reduce(num, "sum"), accelerator.reduce(den, "sum")
    return {k: (n / d if d > 0 else math.nan) for k, n, d in zip(keys, num.tolist(), den.tolist())}


def sum_over_processes(accelerator: Accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not values:
        return dict(values)
    keys = sorted(values)
    vals = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(vals, "sum").tolist()))
