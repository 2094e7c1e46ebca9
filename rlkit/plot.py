"""PNG training curves from a run's ``metrics.jsonl`` (``rlkit plot RUN_DIR``).

``plot_run`` writes the three curves most runs need into ``run_dir/plots/``:

=============  ===========================================================================================
file           metric keys (every key that exists is drawn; the file is skipped when none exists)
=============  ===========================================================================================
reward.png     ``reward/mean``
accuracy.png   ``reward/success``, ``eval/accuracy`` and any other key ending with ``accuracy``
kl.png         ``loss/kl`` and any key where ``kl`` starts a word (``rollout/kl``, ``loss/approx_kl``,
               ``kl_coef``; not ``skill``)
=============  ===========================================================================================

``plot_all`` writes one PNG per numeric key into ``run_dir/plots/all/``.

Each curve is metric vs optimizer step. Dense training curves (at least ``MIN_POINTS_TO_SMOOTH`` points,
keys not under ``eval/``) are drawn as a light raw line plus a bias-corrected exponential moving average
(weight ``EMA_WEIGHT``, as TensorBoard's smoothing slider); sparse and ``eval/`` curves are drawn raw with
markers. When a resumed run logged a step twice the last value wins; non-finite values (``null`` in the
file) are left out of the line.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly: no pyplot, no display, and
the global matplotlib backend of the caller (e.g. a notebook) is left untouched.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlkit.tracking import read_metrics

log = logging.getLogger(__name__)

EMA_WEIGHT = 0.9
MIN_POINTS_TO_SMOOTH = 10
NON_METRIC_KEYS = frozenset({"step", "time"})

Series = tuple[list[int], list[float]]


class PlotFiles(list):
    """The written PNG paths (a plain ``list[Path]``), plus ``skipped``: figure name -> why it was skipped."""

    def __init__(self, paths: Sequence[Path] = (), skipped: dict[str, str] | None = None) -> None:
        super().__init__(paths)
        self.skipped: dict[str, str] = dict(skipped or {})


@dataclass(frozen=True)
class FigureSpec:
    """One PNG: its file stem, title, y label, and a predicate choosing the metric keys to draw."""

    name: str
    title: str
    ylabel: str
    select: Callable[[str], bool]
    describe: str  # what ``select`` looks for, for the "skipped" message
    unit_range: bool = False  # values are rates in [0, 1]


def _is_accuracy(key: str) -> bool:
    return key in ("reward/success", "eval/accuracy") or key.lower().endswith("accuracy")


def _is_kl(key: str) -> bool:
    return key == "loss/kl" or re.search(r"(?<![a-z])kl", key.lower()) is not None


DEFAULT_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("reward", "Mean reward", "reward", lambda k: k == "reward/mean", "'reward/mean'"),
    FigureSpec("accuracy", "Accuracy / success rate", "accuracy", _is_accuracy,
               "'reward/success', 'eval/accuracy' or a key ending with 'accuracy'", unit_range=True),
    FigureSpec("kl", "KL divergence", "KL", _is_kl, "'loss/kl' or a key containing 'kl'"),
)


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metric_series(rows: Sequence[dict[str, Any]]) -> dict[str, Series]:
    """Per numeric key: (steps, values) sorted by step, last value per step, non-finite points dropped.

    Keys whose values are never numbers (e.g. strings) are left out.
    """
    by_key: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for key, raw in row.items():
            value = _as_float(raw)
            if key in NON_METRIC_KEYS or value is None:
                continue
            by_key.setdefault(key, {})[step] = value  # later rows (a resumed run) overwrite
    series: dict[str, Series] = {}
    for key, points in by_key.items():
        steps = sorted(s for s, v in points.items() if math.isfinite(v))
        if steps:
            series[key] = (steps, [points[s] for s in steps])
    return series


def ema(values: Sequence[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Bias-corrected exponential moving average: s_t = w*s_{t-1} + (1-w)*x_t, divided by 1 - w^t."""
    out, acc = [], 0.0
    for t, x in enumerate(values, start=1):
        acc = weight * acc + (1.0 - weight) * x
        out.append(acc / (1.0 - weight**t))
    return out


# --------------------------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------------------------


def _draw_series(ax: Any, key: str, steps: list[int], values: list[float], color: str) -> None:
    smooth = len(values) >= MIN_POINTS_TO_SMOOTH and not key.startswith("eval/")
    if smooth:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=1.0)
        ax.plot(steps, ema(values), color=color, linewidth=2.0, label=f"{key} (EMA {EMA_WEIGHT})")
    else:
        ax.plot(steps, values, color=color, linewidth=1.5, marker="o", markersize=3, label=key)


def save_figure(
    path: Path, series: dict[str, Series], *, title: str, ylabel: str, unit_range: bool = False
) -> Path:
    """Draw every series of ``series`` on one axes (metric vs step) and save a PNG at ``path``."""
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(series))]
    for color, (key, (steps, values)) in zip(colors, series.items()):
        _draw_series(ax, key, steps, values, color)
    all_values = [v for _, values in series.values() for v in values]
    if unit_range and all(0.0 <= v <= 1.0 for v in all_values):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def safe_filename(key: str) -> str:
    """A metric key as a file stem: ``reward/mean`` -> ``reward_mean``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "metric"


# --------------------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------------------


def _load_series(run_dir: str | os.PathLike) -> dict[str, Series]:
    return metric_series(read_metrics(run_dir))  # FileNotFoundError names the missing metrics.jsonl


def _plot_specs(series: dict[str, Series], specs: Sequence[FigureSpec], out: Path) -> PlotFiles:
    result = PlotFiles()
    for spec in specs:
        chosen = {k: s for k, s in series.items() if spec.select(k)}
        if not chosen:
            result.skipped[spec.name] = f"no metric matches {spec.describe}"
            log.info("skipped %s.png: no metric matches %s", spec.name, spec.describe)
            continue
        path = out / f"{spec.name}.png"
        result.append(save_figure(path, chosen, title=spec.title, ylabel=spec.ylabel,
                                  unit_range=spec.unit_range))
    return result


def plot_run(
    run_dir: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    keys: Sequence[str] | None = None,
) -> PlotFiles:
    """Write the standard curves (reward.png, accuracy.png, kl.png) of a run as PNGs.

    Args:
        run_dir: a run directory holding ``metrics.jsonl``.
        out_dir: where to write the PNGs; default ``run_dir/plots``.
        keys: plot exactly these metric keys instead, one PNG each, named after the key
            (``loss/kl`` -> ``loss_kl.png``).

    Returns the written paths (a list); ``.skipped`` maps each figure not written to the reason (its metrics
    are absent from the run). Raises ``FileNotFoundError`` when ``run_dir/metrics.jsonl`` does not exist.
    """
    series = _load_series(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    if keys is None:
        specs: Sequence[FigureSpec] = DEFAULT_FIGURES
    else:
        specs = [FigureSpec(safe_filename(k), k, k, lambda name, k=k: name == k, repr(k)) for k in keys]
    return _plot_specs(series, specs, out)


def plot_all(run_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None) -> PlotFiles:
    """Write one PNG per numeric metric key into ``run_dir/plots/all/`` (or ``out_dir``)."""
    series = _load_series(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots" / "all"
    result = PlotFiles()
    used: set[str] = set()
    for key, points in sorted(series.items()):
        stem = safe_filename(key)
        while stem in used:  # 'a/b' and 'a_b' would collide
            stem += "_"
        used.add(stem)
        result.append(save_figure(out / f"{stem}.png", {key: points}, title=key, ylabel=key))
    return result
