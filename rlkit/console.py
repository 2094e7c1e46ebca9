"""Console output of a run: the tqdm progress bar with live metrics, and rich tables (samples, evaluation).

Only the main process prints: build ``Progress(..., enabled=False)`` on the other ranks. When stderr is not a
terminal (CI, log files) the bar redraws at most every 30 s to keep logs short.
"""

from __future__ import annotations

import numbers
import sys
import time
from typing import IO, Any, Mapping, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from rlkit.tracking import as_scalar

console = Console(stderr=False)

# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------


def truncate(text: str, max_chars: int = 80) -> str:
    """One-line, at most ``max_chars`` characters, markup-escaped: safe to put in a rich table cell."""
    flat = " ".join(str(text).split())
    if len(flat) > max_chars:
        flat = flat[: max(0, max_chars - 1)] + "…"
    return escape(flat)


def format_cell(value: Any, max_chars: int = 80) -> str:
    """Render a value for a table: floats with 4 significant digits, text truncated and escaped."""
    try:
        value = as_scalar(value)
    except ValueError:
        pass
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return truncate(str(value), max_chars)


def samples_table(rows: Sequence[Mapping[str, Any]], *, title: str = "samples", max_chars: int = 80) -> Table:
    """A table with one column per key (first-seen order) and one line per row."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    table = Table(title=escape(title), show_lines=True)
    for column in columns:
        table.add_column(escape(str(column)), overflow="fold")
    for row in rows:
        table.add_row(*(format_cell(row.get(c), max_chars) for c in columns))
    return table


def format_eval_table(results: Mapping[str, Any], title: str = "evaluation") -> Table:
    """A two-column table (metric, value) of evaluation results, in the given order (at least as wide as its
    title, which would otherwise wrap over several lines)."""
    table = Table(title=escape(title), min_width=len(title) + 4)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results.items():
        table.add_row(escape(str(name)), format_cell(value))
    return table


def print_table(table: Table | None) -> None:
    """Print a table to stdout with the module console; None (a disabled logger's result) prints nothing."""
    if table is not None:
        console.print(table)


# --------------------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------------------

#: Postfix label -> metric names tried in order (first present wins). A missing label is not shown.
POSTFIX_KEYS: dict[str, tuple[str, ...]] = {
    "reward": ("reward/mean", "reward"),
    "acc": ("reward/success", "eval/accuracy", "accuracy"),
    "kl": ("loss/kl", "kl"),
    "loss": ("loss/total", "loss/loss", "loss", "loss/policy"),
    "s/step": ("time/step",),
}


def _pick(metrics: Mapping[str, Any], candidates: Sequence[str]) -> float | None:
    for key in candidates:
        if key in metrics:
            try:
                value = as_scalar(metrics[key])
            except ValueError:
                continue
            if isinstance(value, numbers.Real):
                return float(value)
    return None


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed stream
        return False


class Progress:
    """A tqdm bar over optimizer steps, with live reward/acc/kl/loss and seconds per step.

    ``update(step, metrics)`` moves the bar to ``step`` (the number of finished steps) and refreshes the
    postfix from ``metrics`` (names in ``POSTFIX_KEYS``); seconds per step come from ``time/step`` when
    logged, else from the wall time between updates. When ``file`` is not a terminal (CI logs) the bar is
    redrawn at most every 30 s so logs stay short. Disabled: every method is a no-op.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        initial: int = 0,
        enabled: bool = True,
        file: IO[str] | None = None,
    ) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._last_step = initial
        self._last_time = time.perf_counter()
        if not enabled:
            return
        stream = file if file is not None else sys.stderr
        self._bar = tqdm(
            total=total_steps,
            initial=initial,
            file=stream,
            dynamic_ncols=True,
            mininterval=0.5 if _isatty(stream) else 30.0,
            unit="step",
            desc="train",
        )

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Advance the bar to ``step`` and show the chosen metrics."""
        if self._bar is None:
            return
        now = time.perf_counter()
        metrics = dict(metrics or {})
        if "time/step" not in metrics and step > self._last_step:
            metrics["time/step"] = (now - self._last_time) / (step - self._last_step)
        self._bar.set_postfix_str(self.postfix(metrics), refresh=False)
        self._bar.update(step - self._bar.n)
        self._last_step, self._last_time = step, now

    @staticmethod
    def postfix(metrics: Mapping[str, Any]) -> str:
        """The postfix text, e.g. ``reward=0.512 acc=0.43 kl=0.00123 loss=0.0871 s/step=12.3``."""
        parts = []
        for label, candidates in POSTFIX_KEYS.items():
            value = _pick(metrics, candidates)
            if value is not None:
                parts.append(f"{label}={value:.3g}")
        return " ".join(parts)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
