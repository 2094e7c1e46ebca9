"""Adaptive samplers (GVM, Reinforce-Ada, VADE) against fixed and DAPO dynamic sampling, in the regime they target.

Task ("graded"): a pool where, under fixed sampling, most groups have a constant outcome and the learnable middle
moves while training runs. The warm start is SFT on a teacher that forgets the carry (``--teacher-error`` of the
carry sums), never shown a product. Three kinds of prompt (the ``kind`` column), train and held-out alike:

  easy     2-digit + 1-digit sums without a carry: solved by the warm start (all-correct groups);
  carry    2-digit + 1-digit sums with a carry: rarely right at the start (mostly all-wrong groups), learnable;
  product  2-digit x 1-digit products: never seen, not learnable in the run (all-wrong groups).

``reward/zero_std_frac`` (groups whose success is constant) per step shows the regime. Every run trains the same
warm start for ``--steps`` steps of ``--prompts`` prompts (greedy held-out accuracy every ``--eval-every`` steps).
Rollouts are everything generated (probes, extra rounds and refills included: ``rollout/generated``).

  fixed          rollout.n = 8 for every prompt                                          (8 per prompt)
  dynamic        DAPO: groups with constant success dropped, refilled from 3x candidates  (>= 8 per prompt)
  vade           2 candidates per prompt, Thompson sampling on Beta posteriors            (8 per prompt)
  vade_c4        the same with 4 candidates per prompt (a sharper choice)                  (8 per prompt)
  gvm            probe 4 (trained on), 4 per prompt more allocated by gradient variance    (8 per prompt)
  gvm_max_accept the same, prompts whose probe was all correct get no more (max_accept)    (<= 8 per prompt)
  reinforce_ada  rounds of 8 until a balanced group (<= 4 rounds), 8 trained, pool stats  (8-32 per prompt)

Measures (each over ``--seeds``, mean and [min, max]; one PNG per measure, all numbers in the JSON):
  rollouts to target   target = start + ``--target-frac`` x (fixed's mean final - start); linear interpolation
  accuracy at equal rollouts / at equal seconds   at the smallest total any run reached
  accuracy per optimizer step                     at the last step (the plot shows every evaluation)
and, from per-prompt traces (benchmarks/sampler_traces.py), where each sampler's rollouts went by prompt kind.

Usage: python benchmarks/sample_efficiency.py [--samplers fixed vade] [--seeds 0 1 2] [--quick]
           [--out runs/bench/sample_efficiency] [--set vade.candidates=4 ...] [--kinds easy carry] [--train-scale 0.25]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sample_efficiency_report as report  # noqa: E402
import sampler_traces  # noqa: E402
from rlkit.config import load_config  # noqa: E402
from rlkit.tasks import arithmetic  # noqa: E402
from rlkit.trainer import train  # noqa: E402

SAMPLERS = {
    "fixed": {"sampler": {"name": "fixed"}},
    "dynamic": {"sampler": {"name": "dynamic", "oversample": 3, "max_resample_rounds": 4}},
    "vade": {"sampler": {"name": "vade", "candidates": 2}},
    "vade_c4": {"sampler": {"name": "vade", "candidates": 4}},
    "gvm": {"sampler": {"name": "gvm", "probe_n": 4, "budget_per_prompt": 4, "train_on_probe": True}},
    "gvm_max_accept": {"sampler": {"name": "gvm", "probe_n": 4, "budget_per_prompt": 4, "train_on_probe": True,
                                   "max_accept": 0.99}},
    "reinforce_ada": {"sampler": {"name": "reinforce_ada", "rounds": 4, "round_repeat": 8, "global_stats": True},
                      "advantage": {"name": "grpo", "scale": "none"}},
}
SIZES = {"train": {"easy": 150, "carry": 200, "product": 150}, "eval": {"easy": 100, "carry": 150, "product": 100}}


def _split(seed: int) -> dict[str, list[dict]]:
    """Distinct problems of each kind, shuffled."""
    sums = arithmetic.generate(20000, seed=seed, difficulties=(2,), ops="+", b_digits=1)
    prods = arithmetic.generate(20000, seed=seed + 1, difficulties=(2,), ops="*", b_digits=1)
    kinds: dict[str, dict[str, dict]] = {"easy": {}, "carry": {}, "product": {}}
    for row in sums + prods:
        a, op, b = arithmetic.parse_prompt(row["prompt"])
        kind = "product" if op == "*" else ("carry" if a % 10 + b >= 10 else "easy")
        kinds[kind].setdefault(row["prompt"], row | {"kind": kind})
    rng = random.Random(seed)
    out = {k: list(v.values()) for k, v in kinds.items()}
    for rows in out.values():
        rng.shuffle(rows)
    return out


def make_task(out: Path, teacher_error: float, seed: int = 0, kinds: tuple[str, ...] = tuple(SIZES["train"]),
              train_scale: float = 1.0) -> dict[str, Path]:
    """train / eval jsonl with a ``kind`` column (only ``kinds``; ``train_scale`` x each kind's train size, the
    held-out set unchanged), and the SFT file (every sum not held out, teacher answers; the same whichever kinds
    are trained and whatever the scale)."""
    pools = _split(seed)
    train_rows, eval_rows, sft_rows = [], [], []
    for kind, rows in pools.items():
        if kind not in kinds:
            continue
        n_eval, n_train = SIZES["eval"][kind], max(1, round(SIZES["train"][kind] * train_scale))
        eval_rows += rows[:n_eval]
        train_rows += rows[n_eval:n_eval + n_train]
        if kind != "product":
            sft_rows += [dict(r) for r in rows[n_eval:]]
    arithmetic.add_teacher_answers(sft_rows, teacher_error, seed)
    random.Random(seed).shuffle(train_rows)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl", "sft": out / "sft.jsonl"}
    arithmetic.write_jsonl(train_rows, paths["train"])
    arithmetic.write_jsonl(eval_rows, paths["eval"])
    arithmetic.write_jsonl(sft_rows, paths["sft"])
    return paths


def warm_start(out: Path, paths: dict[str, Path], steps: int) -> Path:
    from rlkit.sft import SFTConfig, run_sft
    from rlkit.tiny_model import build_tiny_model
    if (out / "sft" / "config.json").exists():
        return out / "sft"
    init = build_tiny_model(out / "init", size="tiny", seed=0)
    return run_sft(SFTConfig(model=str(init), data=str(paths["sft"]), answer_column="teacher_answer",
                             output=str(out / "sft"), steps=steps, seed=0))


def recipe(model: Path, paths: dict[str, Path], out: Path, sampler: str, seed: int, args) -> dict:
    c = {"model": {"name_or_path": str(model)},
         "data": {"train": str(paths["train"]), "eval": str(paths["eval"])},
         "reward": {"functions": [{"name": "exact_match"}]},
         "rollout": {"engine": "hf", "n": 8, "max_new_tokens": 6, "temperature": 1.0},
         "advantage": {"name": "grpo", "scale": "group"},
         "losses": [{"name": "ppo_clip", "eps_low": 0.2, "eps_high": 0.28}],
         "aggregation": "token_mean",
         "train": {"output_dir": str(out), "steps": args.steps, "prompts_per_step": args.prompts, "mini_batches": 2,
                   "micro_batch_size": 64, "lr": args.lr, "warmup_steps": 3, "eval_every": args.eval_every,
                   "eval_at_start": True, "eval_at_end": True, "save_every": 0, "sample_every": 0, "seed": seed,
                   "resume": "never"},
         "eval": {"max_prompts": 1000},
         "logging": {"tensorboard": False}}
    c.update(copy.deepcopy(SAMPLERS[sampler]))
    return c


def overrides(sampler: str, settings: list[str]) -> list[str]:
    """``--set vade.candidates=4`` -> ``sampler.candidates=4`` for that sampler's runs (rlkit's override syntax)."""
    return [f"sampler.{item.split('.', 1)[1]}" for item in settings if item.split(".", 1)[0] == sampler]


def curve(out: Path) -> dict[str, list[float]]:
    """Per evaluation: step, rollouts so far, seconds so far, held-out accuracy; and per step the zero-std share."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = seconds = 0.0
    points: dict[str, list[float]] = {"step": [], "rollouts": [], "seconds": [], "accuracy": [], "zero_std": []}
    for r in rows:
        rollouts += r.get("rollout/generated", 0.0)
        seconds += r.get("time/step", 0.0)
        if "reward/zero_std_frac" in r:
            points["zero_std"].append(r["reward/zero_std_frac"])
        if "eval/accuracy" in r:
            for key, value in (("step", r.get("step", 0)), ("rollouts", rollouts), ("seconds", seconds),
                               ("accuracy", r["eval/accuracy"])):
                points[key].append(float(value))
    return points


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--target-frac", type=float, default=0.75)
    ap.add_argument("--teacher-error", type=float, default=0.9)
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--kinds", nargs="+", default=list(SIZES["train"]), choices=list(SIZES["train"]),
                    help="prompt kinds in train and eval (e.g. --kinds easy carry: no unlearnable part)")
    ap.add_argument("--train-scale", type=float, default=1.0,
                    help="train pool size x this (e.g. 0.25: 126 prompts, each revisited every ~2 steps)")
    ap.add_argument("--set", nargs="*", default=[], help="SAMPLER.OPTION=VALUE, e.g. vade.candidates=4")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 6 steps of 16 prompts, 150 SFT steps")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/sample_efficiency")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.steps, args.prompts, args.eval_every, args.sft_steps = args.seeds[:1], 6, 16, 3, 150
    return args


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    if not args.train_scale > 0:
        raise SystemExit(f"--train-scale must be > 0, got {args.train_scale}")
    paths = make_task(args.out / "data", args.teacher_error, kinds=tuple(args.kinds), train_scale=args.train_scale)
    model = warm_start(args.out, paths, args.sft_steps)
    runs: dict[str, dict[int, dict]] = {s: {} for s in args.samplers}
    for sampler in args.samplers:
        for seed in args.seeds:
            run_dir = args.out / f"{sampler}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            sampler_traces.install(run_dir / "trace.jsonl")
            t0 = time.perf_counter()
            base = recipe(model, paths, run_dir, sampler, seed, args)
            train(load_config(None, overrides(sampler, args.set), base=base))
            runs[sampler][seed] = curve(run_dir)
            print(f"{sampler} seed {seed}: {time.perf_counter() - t0:.0f} s, accuracy "
                  + " ".join(f"{a:.3f}" for a in runs[sampler][seed]["accuracy"]), flush=True)
    traces = {s: sampler_traces.summary([args.out / f"{s}_seed{seed}" / "trace.jsonl" for seed in args.seeds])
              for s in args.samplers}
    persistence = {s: sampler_traces.persistence([args.out / f"{s}_seed{seed}" / "trace.jsonl" for seed in args.seeds])
                   for s in args.samplers}
    result = report.build(runs, traces, args.target_frac) | {"persistence": persistence,
                                                              "args": vars(args) | {"out": str(args.out)}}
    (args.out / "sample_efficiency.json").write_text(json.dumps(result, indent=1))
    report.print_tables(result)
    report.plot(result, args.out)
    print(f"\nwrote {args.out / 'sample_efficiency.json'} and the PNGs in {args.out}")


if __name__ == "__main__":
    main()
