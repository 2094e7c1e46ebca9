"""Checks shared by the functional core: an option among choices, per-completion values against their groups,
and the log-ratio clamp every exp(log-ratio) uses."""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # |log pi - log pi_old| and |log pi_ref - log pi| are clamped to this before exp


def check_choice(name: str, value: object, options: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError naming ``name=value`` and the valid options if ``value`` is not one of them."""
    if value not in options:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, options))}")


def check_grouped(values: torch.Tensor, group_ids: torch.Tensor, where: str, *, name: str = "rewards",
                  allow_nan: bool = True) -> torch.Tensor:
    """Validate per-completion ``values`` [N] against ``group_ids`` [N]; returns them detached in float64."""
    if values.dim() != 1 or group_ids.shape != values.shape:
        raise ValueError(f"{where}: {name} {tuple(values.shape)} and group_ids {tuple(group_ids.shape)} must both be "
                         "1-D of the same length [N]")
    x = values.detach().to(torch.float64)  # [N]
    if not allow_nan and torch.isnan(x).any():
        raise ValueError(f"{where}: {name} contain NaN; score, drop or zero those completions first")
    return x
