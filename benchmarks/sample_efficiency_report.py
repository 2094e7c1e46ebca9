"""Tables, JSON and plots of benchmarks/sample_efficiency.py: the four measures, over seeds, with their spread.

``runs[sampler][seed]`` is a curve: lists ``step``, ``rollouts``, ``seconds``, ``accuracy`` (one entry per
evaluation) and ``zero_std`` (one per step). Every measure is reported as mean and [min, max] over seeds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path


def at(curve: dict, x_key: str, x: float) -> float:
    """Accuracy of ``curve`` at ``x`` on its ``x_key`` axis (linear interpolation; NaN past its end)."""
    xs, ys = curve[x_key], curve["accuracy"]
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x0 <= x <= x1:
            return y0 + (x - x0) / max(x1 - x0, 1e-12) * (y1 - y0)
    return math.nan


def reach(curve: dict, target: float) -> tuple[float, float, float]:
    """(rollouts, seconds, steps) where the accuracy first reaches ``target`` (interpolated); NaNs if never."""
    acc = curve["accuracy"]
    if acc[0] >= target:
        return 0.0, 0.0, 0.0
    for i in range(1, len(acc)):
        if acc[i] >= target > acc[i - 1]:
            f = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return tuple(curve[k][i - 1] + f * (curve[k][i] - curve[k][i - 1]) for k in ("rollouts", "seconds", "step"))
    return math.nan, math.nan, math.nan


def smoothed(curve: dict) -> dict:
    """``curve`` with each accuracy averaged with its neighbours (window 3): one evaluation of 350 greedy answers
    moves by about +-0.02 between checkpoints, enough to make the first crossing of a target jump by many steps."""
    acc = curve["accuracy"]
    avg = [sum(acc[max(i - 1, 0):i + 2]) / len(acc[max(i - 1, 0):i + 2]) for i in range(len(acc))]
    return curve | {"accuracy": [acc[0]] + avg[1:]}


def spread(values: list[float]) -> dict[str, float]:
    """mean, min, max over the finite values, and how many of all were finite."""
    ok = [v for v in values if v == v]
    return {"mean": statistics.fmean(ok) if ok else math.nan, "min": min(ok, default=math.nan),
            "max": max(ok, default=math.nan), "n": len(ok), "of": len(values)}


def build(runs: dict[str, dict[int, dict]], traces: dict[str, dict], target_frac: float) -> dict:
    """Every measure of every sampler (see module docstring), plus the curves and the traces' summaries."""
    raw, runs = runs, {s: {k: smoothed(c) for k, c in seeds.items()} for s, seeds in runs.items()}  # measures: smoothed
    start = statistics.fmean(c["accuracy"][0] for seeds in runs.values() for c in seeds.values())
    ref = runs.get("fixed") or next(iter(runs.values()))
    fixed_final = statistics.fmean(c["accuracy"][-1] for c in ref.values())
    target = start + target_frac * (fixed_final - start)
    equal_rollouts = min(c["rollouts"][-1] for seeds in runs.values() for c in seeds.values())
    equal_seconds = min(c["seconds"][-1] for seeds in runs.values() for c in seeds.values())
    fixed_hits = [h for h in (reach(c, target)[0] for c in ref.values()) if h == h]
    fixed_reach = statistics.fmean(fixed_hits) if fixed_hits else math.nan
    table = {}
    for sampler, seeds in runs.items():
        hits = [reach(c, target) for c in seeds.values()]
        table[sampler] = {
            "rollouts_to_target": spread([h[0] for h in hits]),
            "rollouts_vs_fixed": spread([h[0] / fixed_reach for h in hits]),
            "seconds_to_target": spread([h[1] for h in hits]),
            "steps_to_target": spread([h[2] for h in hits]),
            "accuracy_at_equal_rollouts": spread([at(c, "rollouts", equal_rollouts) for c in seeds.values()]),
            "accuracy_at_equal_seconds": spread([at(c, "seconds", equal_seconds) for c in seeds.values()]),
            "final_accuracy": spread([c["accuracy"][-1] for c in seeds.values()]),
            "rollouts_per_step": spread([c["rollouts"][-1] / max(c["step"][-1], 1) for c in seeds.values()]),
            "seconds_per_step": spread([c["seconds"][-1] / max(c["step"][-1], 1) for c in seeds.values()]),
            "zero_std_frac": spread([statistics.fmean(c["zero_std"]) for c in seeds.values() if c["zero_std"]]),
        }
    return {"start": start, "fixed_final": fixed_final, "target": target, "target_frac": target_frac,
            "equal_rollouts": equal_rollouts, "equal_seconds": equal_seconds, "table": table,
            "traces": traces, "curves": {s: {str(k): c for k, c in seeds.items()} for s, seeds in raw.items()}}


def _fmt(s: dict, digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    core = f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
    return core + (f" ({s['n']}/{s['of']})" if s["n"] < s["of"] else "")


def print_tables(result: dict) -> None:
    print(f"\nstart accuracy {result['start']:.3f}; fixed final {result['fixed_final']:.3f}; target "
          f"{result['target']:.3f} ({result['target_frac']:.0%} of fixed's gain); equal rollouts "
          f"{result['equal_rollouts']:.0f}, equal seconds {result['equal_seconds']:.0f}. mean [min, max] over seeds")
    cols = [("rollouts_vs_fixed", 2), ("rollouts_to_target", 0), ("steps_to_target", 1),
            ("accuracy_at_equal_rollouts", 3), ("accuracy_at_equal_seconds", 3), ("final_accuracy", 3),
            ("rollouts_per_step", 0), ("seconds_per_step", 2), ("zero_std_frac", 2)]
    print("| sampler | " + " | ".join(c for c, _ in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for sampler, row in result["table"].items():
        print(f"| {sampler} | " + " | ".join(_fmt(row[c], d) for c, d in cols) + " |")
    print("\nwhere the rollouts went (all steps, all seeds), per prompt kind: generated share / trained share / "
          "informative-group share / success rate of what was generated / the sampler's own view")
    for sampler, kinds in result["traces"].items():
        parts = []
        for kind, s in kinds.items():
            view = " ".join(f"{k[5:]}={v:.3f}" for k, v in s.items() if k.startswith("view_"))
            parts.append(f"{kind}: {s['generated_share']:.2f}/{s['trained_share']:.2f}/{s['informative_share']:.2f}/"
                         f"{s['success_rate']:.2f}/{s['rollouts_per_candidate']:.1f} per candidate {view}")
        print(f"  {sampler:<14} " + "; ".join(parts))
    print("\ndoes a prompt's last outcome predict its next? P(informative | informative last visit) vs "
          "P(informative | constant last visit), visits, mean steps between visits")
    for sampler, p in result.get("persistence", {}).items():
        print(f"  {sampler:<14} {p['p_informative_after_informative']:.3f} vs {p['p_informative_after_constant']:.3f}"
              f"  ({p['revisits']:.0f} revisits, {p['mean_gap_steps']:.1f} steps apart)")


def _band(ax, curves: list[dict], x_key: str, color: str, label: str) -> None:
    """Mean curve over seeds on a common grid of ``x_key`` and the min-max band."""
    top = min(c[x_key][-1] for c in curves)
    grid = [top * i / 40 for i in range(41)]
    ys = [[at(c, x_key, x) for c in curves] for x in grid]
    ax.plot(grid, [statistics.fmean(y) for y in ys], color=color, label=label)
    ax.fill_between(grid, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.2)


def plot(result: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    axes = (("rollouts", "rollouts generated"), ("seconds", "seconds (rollout + training, evaluation excluded)"),
            ("step", "optimizer step"))
    for x_key, label in axes:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (sampler, seeds) in enumerate(result["curves"].items()):
            _band(ax, list(seeds.values()), x_key, f"C{i}", sampler)
        ax.axhline(result["target"], color="grey", linestyle="--", label="target")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out accuracy (greedy)")
        ax.set_title(f"accuracy against {x_key}: mean and min-max over seeds")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"accuracy_vs_{x_key}.png", dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (sampler, seeds) in enumerate(result["curves"].items()):
        per_step = list(zip(*[c["zero_std"] for c in seeds.values()]))
        ax.plot(range(1, len(per_step) + 1), [statistics.fmean(v) for v in per_step], color=f"C{i}", label=sampler)
    ax.set_xlabel("step")
    ax.set_ylabel("share of trained groups with constant success")
    ax.set_title("the regime: zero-variance groups per step (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "zero_std_frac.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = result["table"]
    names = list(table)
    ax.bar(names, [table[s]["rollouts_vs_fixed"]["mean"] for s in names], color=[f"C{i}" for i in range(len(names))])
    lo = [table[s]["rollouts_vs_fixed"]["mean"] - table[s]["rollouts_vs_fixed"]["min"] for s in names]
    hi = [table[s]["rollouts_vs_fixed"]["max"] - table[s]["rollouts_vs_fixed"]["mean"] for s in names]
    ax.errorbar(names, [table[s]["rollouts_vs_fixed"]["mean"] for s in names], yerr=[lo, hi], fmt="none", color="k")
    ax.axhline(0.7, color="grey", linestyle="--", label="target 0.7x")
    ax.set_ylabel("rollouts to target / fixed's")
    ax.set_title("rollouts to the target accuracy (min-max over seeds that reached it)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rollouts_to_target.png", dpi=110)
    plt.close(fig)
