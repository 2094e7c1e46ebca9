"""Per-step time split (generation, reward, scoring, training, other) and completion tokens/s.

Cases (all on this machine, rollout.engine=hf unless --engine is given):
  quickstart  recipes/quickstart.yaml on the tiny model (its SFT checkpoint when present, else a fresh tiny model)
  small       the ~12M-parameter `small` model, 32 prompts x 8 samples x up to 64 new tokens

Usage: python benchmarks/step_time.py [--cases quickstart small] [--steps 6] [--json out.json]
           [--losses ppo_clip gspo cispo clip_cov kl_cov ppo_clip+entropy]   # the small case once per loss
                                                      # ("a+b": both losses in one run)
           [--model-dir DIR --size-label NAME]   # e.g. a >=0.5B model built from a local config on a GPU
The first step is a warm-up and is excluded. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlkit.config import load_config  # noqa: E402
from rlkit.tasks import write_task  # noqa: E402
from rlkit.tiny_model import build_tiny_model  # noqa: E402
from rlkit.trainer import train  # noqa: E402


def _overrides(model: Path, data: dict, out: Path, steps: int, extra: list[str]) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={data['train']}", f"data.eval={data['eval']}",
            f"train.output_dir={out}", f"train.steps={steps}", "train.eval_at_start=false", "train.eval_at_end=false",
            "train.sample_every=0", "train.save_every=0", "train.resume=never", "logging.tensorboard=false", *extra]


def small_setup(tmp: Path) -> tuple[Path, dict]:
    """The `small` model (~12M) and the 2-digit addition data that the rollout and selection benchmarks share."""
    data = write_task("arithmetic", tmp / "data", train=2000, eval=100, seed=0, difficulties=(2,), ops="+")
    return build_tiny_model(tmp / "small", size="small"), data


def small_base(model: Path, max_new_tokens: int, *, reward: dict | None = None, micro_batch_size: int = 16,
               **rollout) -> dict:
    """The benchmark recipe: 32 prompts x 8 samples on ``model`` (data paths come from ``_overrides``)."""
    return {"model": {"name_or_path": str(model)}, "data": {"train": "x"},
            "reward": {"functions": [reward or {"name": "exact_match"}]},
            "rollout": {"n": 8, "max_new_tokens": max_new_tokens, "temperature": 1.0, **rollout},
            "train": {"prompts_per_step": 32, "micro_batch_size": micro_batch_size, "lr": 1e-5}}


def run_case(name: str, recipe: str | None, base: dict | None, overrides: list[str], out: Path) -> dict:
    cfg = load_config(recipe, overrides, base=base)
    train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r][1:]  # drop the warm-up step
    med = lambda k: statistics.fmean(r.get(k, 0.0) for r in steps)  # means, so the split adds up
    tokens = statistics.fmean(r["rollout/length_mean"] * r["rollout/completions"] for r in steps)
    split = {k: med(f"time/{k}") for k in ("step", "generate", "reward", "score", "train")}
    split["other"] = split["step"] - split["generate"] - split["reward"] - split["score"] - split["train"]
    sync = {k: med(f"rollout/{k}") for k in ("sync_s", "sync_gb", "sync_gb_per_s", "canary_diff")
            if any(f"rollout/{k}" in r for r in steps)}
    overhead = (split["step"] - split["generate"] - split["train"] - split["score"]) / split["step"]  # score = compute
    return {"case": name, "measured_steps": len(steps), "completions_per_step": med("rollout/completions"),
            "overhead_share": overhead, **sync,
            "completion_tokens_per_step": tokens, "gen_tokens_per_s": tokens / max(split["generate"], 1e-9),
            **{f"{k}_s": v for k, v in split.items()},
            **{f"{k}_share": split[k] / split["step"] for k in ("generate", "reward", "score", "train", "other")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["quickstart", "small"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--model-dir", default=None, help="benchmark this HF model dir with the 'small' case settings")
    ap.add_argument("--size-label", default="custom")
    ap.add_argument("--losses", nargs="+", default=["ppo_clip"],
                    help="policy losses to run the small case with (each with 2 mini-batches, so every loss has "
                         "old log-probs); the table's train_vs_first column compares their training phase")
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "step_time.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-bench-"))
    data = write_task("arithmetic", tmp / "data", train=2000, eval=100, seed=0, difficulties=(2,), ops="+")
    results = []
    engine = [f"rollout.engine={args.engine}"]
    if "quickstart" in args.cases:
        sft = ROOT / "runs" / "quickstart" / "sft"
        model = sft if sft.is_dir() else build_tiny_model(tmp / "tiny", size="tiny")
        out = tmp / "qs"
        results.append(run_case(f"quickstart ({'sft' if sft.is_dir() else 'random'} tiny)", str(ROOT / "recipes/quickstart.yaml"),
                                None, _overrides(model, data, out, args.steps, engine), out))
    if "small" in args.cases or args.model_dir:
        model = Path(args.model_dir) if args.model_dir else build_tiny_model(tmp / "small", size="small")
        label = args.size_label if args.model_dir else "small (12M)"
        for loss in args.losses:
            out = tmp / f"small_run_{loss}"
            base = small_base(model, 64, micro_batch_size=32)
            names = ", ".join(f"{{name: {n}}}" for n in loss.split("+"))
            extra = [] if args.losses == ["ppo_clip"] else [f"losses=[{names}]", "train.mini_batches=2"]
            row = run_case(f"{label}: 32 prompts x 8 x 64 tok", None, base,
                           _overrides(model, data, out, args.steps, engine + extra), out)
            results.append(row | {"loss": loss})
    first_train = next((r["train_s"] for r in results if "loss" in r), None)
    for r in results:
        r["train_vs_first"] = r["train_s"] / first_train if "loss" in r and first_train else float("nan")
        r["train_ms_per_token"] = 1e3 * r["train_s"] / max(r["completion_tokens_per_step"], 1e-9)
    first_tok = next((r["train_ms_per_token"] for r in results if "loss" in r), None)
    for r in results:  # completions grow or shrink differently under each loss: compare per trained token too
        r["per_token_vs_first"] = r["train_ms_per_token"] / first_tok if "loss" in r and first_tok else float("nan")
    header = ["case", "loss", "step_s", "generate_s", "reward_s", "score_s", "train_s", "train_vs_first",
              "train_ms_per_token", "per_token_vs_first", "other_s",
              "gen_tokens_per_s", "completion_tokens_per_step"]
    for r in results:
        r.setdefault("loss", "-")
    print(" | ".join(header))
    for r in results:
        print(" | ".join(r[h] if isinstance(r[h], str) else f"{r[h]:.3f}" for h in header))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"threads": os.environ.get("OMP_NUM_THREADS"), "results": results}, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
