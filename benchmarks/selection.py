"""D³S at the start of a run: training time saved per step, and what the selection itself costs.

The `small` model (~12M parameters), 32 prompts x 8 samples x up to 64 new tokens, hf engine, on this machine.
Two cases, D³S pinned to the start of its schedule (where it is most aggressive: 50% of the samples, 20% of
their tokens with the rlkit defaults):

  grpo   selection: all
  d3s    selection: d3s (mode cross; needs the old-policy entropy, which the scoring pass then computes)

Prints per case: time/train (forward + backward + optimizer), time/selection, time/score, time/step, the
share of tokens trained, and the ratios train(d3s)/train(grpo) and selection/step (target < 2%). Dropped
samples skip the forward/backward, so the saving follows the kept sample share; tokens dropped inside a kept row
still go through the (padded) forward pass and save nothing until micro-batches are packed. D³S also needs the
old-policy entropy, i.e. a scoring pass that plain GRPO with one optimizer step per batch does not run: that
cost shows in time/score.
Usage: python benchmarks/selection.py [--steps 4] [--json runs/bench/selection.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from step_time import _overrides, small_base, small_setup  # noqa: E402

from rlkit.config import load_config  # noqa: E402
from rlkit.trainer import train  # noqa: E402

KEYS = ("train", "selection", "score", "step")
# D3S's rlkit default schedule starts at 50% of the samples and 20% of their tokens; pinning both ratios to those
# start values measures the beginning of a run without running a long one.
D3S_AT_START = ["selection.name=d3s", "selection.sample_ratio=0.5", "selection.token_ratio=0.2"]


def run(name: str, model: Path, data: dict, out: Path, steps: int, extra: list[str]) -> dict:
    # a random model never gets an arithmetic answer right; "starts with a digit" gives every step a reward
    # signal, so D3S has non-zero advantages to select on (with none it keeps everything)
    base = small_base(model, 64, reward={"name": "format", "kwargs": {"pattern": "^[0-9]"}}, engine="hf")
    train(load_config(None, _overrides(model, data, out, steps + 1, extra), base=base))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]   # drop the warm-up step
    mean = {k: statistics.fmean(r[f"time/{k}"] for r in rows) for k in KEYS}
    return {"case": name, **{f"{k}_s": v for k, v in mean.items()},
            "token_frac": statistics.fmean(r.get("selection/token_frac", 1.0) for r in rows),
            "sample_frac": statistics.fmean(r.get("selection/sample_frac", 1.0) for r in rows),
            "selection_share": mean["selection"] / mean["step"], "measured_steps": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "selection.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-selection-"))
    model, data = small_setup(tmp)
    results = [run("grpo", model, data, tmp / "grpo", args.steps, []),
               run("d3s", model, data, tmp / "d3s", args.steps, D3S_AT_START)]
    cols = ["case", "train_s", "selection_s", "score_s", "step_s", "sample_frac", "token_frac", "selection_share"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols))
    grpo, d3s = results
    summary = {"train_time_ratio_d3s_vs_grpo": d3s["train_s"] / grpo["train_s"],
               "step_time_ratio_d3s_vs_grpo": d3s["step_s"] / grpo["step_s"],
               "d3s_selection_share_of_step": d3s["selection_share"]}
    print(json.dumps(summary, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"cases": results, **summary}, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
