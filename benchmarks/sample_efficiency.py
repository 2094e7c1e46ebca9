"""Adaptive samplers vs fixed sampling: rollouts (and wall time) to reach a held-out accuracy target.

Task: a mixed-difficulty arithmetic set where most prompts are too easy or too hard for the starting model.
  * 40% quickstart problems (2-digit + 1-digit): the warm start (SFT on a carry-forgetting teacher) solves the
    ones without a carry (too easy, ~100%) and few of those with one (learnable: RL fixes the carry);
  * 60% 2-digit x 1-digit products, never seen in SFT (too hard: ~0% for the tiny model).
The held-out set (500 problems) has the same mix. Every sampler trains the same warm start for ``--steps`` steps of
``--prompts`` prompts, evaluating greedy accuracy every ``--eval-every`` steps; rollouts are everything generated
(probes and extra rounds included, ``rollout/generated``).

  fixed          rollout.n = 8
  reinforce_ada  n = 8 trained, rounds of 8, at most 3 rounds, balanced exit, global statistics
  vade           2 candidates per prompt, Thompson sampling on Beta posteriors (the data is revisited every epoch)
  gvm            probe 4 per prompt (trained on), budget 8 per prompt by gradient variance

Target: ``start + --target-frac x (mean final accuracy of fixed - start)``. For each run the rollouts and seconds at
the first evaluation reaching the target (linearly interpolated between evaluations); ``-`` if never reached.
Prints a table (mean over seeds, and the ratio to fixed), writes JSON and a PNG of accuracy against rollouts.

Usage: python benchmarks/sample_efficiency.py [--seeds 0 1 2] [--steps 60] [--out runs/bench/sample_efficiency]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlkit.config import load_config  # noqa: E402
from rlkit.tasks import arithmetic  # noqa: E402
from rlkit.trainer import train  # noqa: E402

SAMPLERS = {
    "fixed": {"sampler": {"name": "fixed"}},
    "reinforce_ada": {"sampler": {"name": "reinforce_ada", "rounds": 3, "round_repeat": 8, "global_stats": True},
                      "advantage": {"name": "grpo", "scale": "none"}},
    "vade": {"sampler": {"name": "vade", "candidates": 2}},
    "gvm": {"sampler": {"name": "gvm", "probe_n": 4, "budget_per_prompt": 8, "train_on_probe": True}},
}


def unique(rows: list[dict]) -> list[dict]:
    seen: set[str] = set()
    return [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]


def make_task(out: Path, seed: int = 0) -> dict[str, Path]:
    """Mixed-difficulty train/eval jsonl + an SFT file (the quickstart part only, teacher answers)."""
    rng = random.Random(seed)
    easyish = unique(arithmetic.generate(3000, seed=seed, difficulties=(2,), ops="+", b_digits=1))   # ~900
    arithmetic.add_teacher_answers(easyish, 0.8, seed)
    hard = unique(arithmetic.generate(3000, seed=seed + 1, difficulties=(2,), ops="*", b_digits=1))
    train = easyish[:200] + hard[:300]
    evals = easyish[200:400] + hard[300:600]
    rng.shuffle(train)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl", "sft": out / "sft.jsonl"}
    arithmetic.write_jsonl(train, paths["train"])
    arithmetic.write_jsonl([{k: v for k, v in r.items() if k != "teacher_answer"} for r in evals], paths["eval"])
    arithmetic.write_jsonl(easyish[400:], paths["sft"])   # SFT never sees a product
    return paths


def warm_start(out: Path, paths: dict[str, Path]) -> Path:
    from rlkit.sft import SFTConfig, run_sft
    from rlkit.tiny_model import build_tiny_model
    if (out / "sft" / "config.json").exists():
        return out / "sft"
    init = build_tiny_model(out / "init", size="tiny", seed=0)
    return run_sft(SFTConfig(model=str(init), data=str(paths["sft"]), answer_column="teacher_answer",
                             output=str(out / "sft"), steps=600, seed=0))


def recipe(model: Path, paths: dict[str, Path], out: Path, sampler: str, seed: int, args) -> dict:
    c = {"model": {"name_or_path": str(model)},
         "data": {"train": str(paths["train"]), "eval": str(paths["eval"])},
         "reward": {"functions": [{"name": "exact_match"}]},
         "rollout": {"engine": "hf", "n": 8, "max_new_tokens": 6, "temperature": 1.0},
         "advantage": {"name": "grpo", "scale": "group"},
         "losses": [{"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28}],
         "aggregation": "token_mean",
         "train": {"output_dir": str(out), "steps": args.steps, "prompts_per_step": args.prompts, "micro_batch_size": 64,
                   "lr": 1e-4, "warmup_steps": 3, "eval_every": args.eval_every, "eval_at_start": True,
                   "eval_at_end": True, "save_every": 0, "sample_every": 0, "seed": seed},
         "eval": {"max_prompts": 500},
         "logging": {"tensorboard": False}}
    c.update(SAMPLERS[sampler])
    return c


def curve(out: Path) -> list[tuple[float, float, float]]:
    """[(rollouts so far, seconds so far, held-out accuracy)] at every evaluation."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = seconds = 0.0
    points = []
    for r in rows:
        rollouts += r.get("rollout/generated", 0.0)
        seconds += r.get("time/step", 0.0)
        if "eval/accuracy" in r:
            points.append((rollouts, seconds, r["eval/accuracy"]))
    return points


def reach(points: list[tuple[float, float, float]], target: float) -> tuple[float, float]:
    """(rollouts, seconds) where the accuracy curve first reaches ``target`` (linear interpolation)."""
    for (r0, s0, a0), (r1, s1, a1) in zip(points, points[1:]):
        if a1 >= target > a0:
            f = (target - a0) / (a1 - a0)
            return r0 + f * (r1 - r0), s0 + f * (s1 - s0)
    return (0.0, 0.0) if points and points[0][2] >= target else (math.nan, math.nan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--target-frac", type=float, default=0.75)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/sample_efficiency")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    paths = make_task(args.out / "data")
    model = warm_start(args.out, paths)
    curves: dict[str, dict[int, list]] = {s: {} for s in args.samplers}
    for sampler in args.samplers:
        for seed in args.seeds:
            run_dir = args.out / f"{sampler}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)   # a leftover run would be resumed (train.resume=auto)
            t0 = time.perf_counter()
            train(load_config(None, [], base=recipe(model, paths, run_dir, sampler, seed, args)))
            curves[sampler][seed] = curve(run_dir)
            print(f"{sampler} seed {seed}: {time.perf_counter() - t0:.0f} s, accuracy "
                  + " ".join(f"{a:.3f}" for _, _, a in curves[sampler][seed]), flush=True)
    start = statistics.fmean(c[0][2] for runs in curves.values() for c in runs.values())
    base = curves.get("fixed") or next(iter(curves.values()))
    final = statistics.fmean(c[-1][2] for c in base.values())
    target = start + args.target_frac * (final - start)
    table = []
    for sampler, runs in curves.items():
        hits = [reach(c, target) for c in runs.values()]
        got = [h for h in hits if not math.isnan(h[0])]
        table.append({"sampler": sampler, "reached": f"{len(got)}/{len(hits)}",
                      "rollouts": statistics.fmean(h[0] for h in got) if got else math.nan,
                      "seconds": statistics.fmean(h[1] for h in got) if got else math.nan,
                      "final_accuracy": statistics.fmean(c[-1][2] for c in runs.values()),
                      "total_rollouts": statistics.fmean(c[-1][0] for c in runs.values())})
    ref = next((row for row in table if row["sampler"] == "fixed"), table[0])
    for row in table:
        row["rollouts_vs_fixed"] = row["rollouts"] / ref["rollouts"] if ref["rollouts"] else math.nan
    print(f"\nstart accuracy {start:.3f}; fixed final {final:.3f}; target {target:.3f} "
          f"({args.target_frac:.0%} of fixed's gain); mean over seeds {args.seeds}")
    print(f"{'sampler':<14} {'reached':>7} {'rollouts':>9} {'vs fixed':>8} {'seconds':>8} {'final acc':>9} "
          f"{'all rollouts':>12}")
    for row in table:
        print(f"{row['sampler']:<14} {row['reached']:>7} {row['rollouts']:>9.0f} {row['rollouts_vs_fixed']:>8.2f} "
              f"{row['seconds']:>8.1f} {row['final_accuracy']:>9.3f} {row['total_rollouts']:>12.0f}")
    result = {"start": start, "target": target, "table": table, "curves": curves, "args": vars(args) | {"out": str(args.out)}}
    (args.out / "sample_efficiency.json").write_text(json.dumps(result, indent=1))
    plot(curves, target, args.out / "sample_efficiency.png")
    print(f"\nwrote {args.out / 'sample_efficiency.json'} and {args.out / 'sample_efficiency.png'}")


def plot(curves: dict[str, dict[int, list]], target: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (sampler, runs) in enumerate(curves.items()):
        for j, points in enumerate(runs.values()):
            ax.plot([p[0] for p in points], [p[2] for p in points], color=f"C{i}", alpha=0.8,
                    label=sampler if j == 0 else None, marker="o", markersize=3)
    ax.axhline(target, color="grey", linestyle="--", label="target")
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title("sample efficiency on a mixed-difficulty task (3 seeds each)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
