"""benchmarks/sample_efficiency.py (its task), sample_efficiency_report.py and sampler_traces.py: the measures the
README's sampler tables are built from."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import sample_efficiency_report as report  # noqa: E402
import sampler_traces  # noqa: E402


def curve(acc, rollouts_per_eval=100.0):
    n = len(acc)
    return {"step": [5.0 * i for i in range(n)], "rollouts": [rollouts_per_eval * i for i in range(n)],
            "seconds": [2.0 * i for i in range(n)], "accuracy": list(acc), "zero_std": [0.5] * (5 * (n - 1))}


def test_reach_and_at_interpolate_linearly():
    c = curve([0.2, 0.3, 0.5])
    # target 0.4 lies half-way between evaluation 1 (0.3) and 2 (0.5): rollouts 150, seconds 3, step 7.5
    assert report.reach(c, 0.4) == pytest.approx((150.0, 3.0, 7.5))
    assert report.reach(c, 0.2) == (0.0, 0.0, 0.0)                 # reached at the start
    assert all(math.isnan(v) for v in report.reach(c, 0.6))         # never
    assert report.at(c, "rollouts", 50.0) == pytest.approx(0.25)    # half-way from 0.2 to 0.3
    assert math.isnan(report.at(c, "rollouts", 250.0))              # past the curve's end


def test_smoothed_keeps_the_start_and_averages_neighbours():
    # [0.2, 0.4, 0.3, 0.5] -> start 0.2 kept; (0.2+0.4+0.3)/3 = 0.3; (0.4+0.3+0.5)/3 = 0.4; (0.3+0.5)/2 = 0.4
    assert report.smoothed(curve([0.2, 0.4, 0.3, 0.5]))["accuracy"] == pytest.approx([0.2, 0.3, 0.4, 0.4])


def test_build_ratios_against_fixed():
    # fixed reaches the target at 300 rollouts, "other" at 150 -> 0.5x.  start 0.2 (both), fixed final smoothed =
    # (0.4 + 0.6) / 2 = 0.5 (last point averages with its one neighbour); target = 0.2 + 0.5 * 0.3 = 0.35
    runs = {"fixed": {0: curve([0.2, 0.2, 0.3, 0.4, 0.6])}, "other": {0: curve([0.2, 0.5, 0.5, 0.5, 0.5])}}
    out = report.build(runs, {}, 0.5)
    assert out["target"] == pytest.approx(0.35)
    # fixed smoothed: [0.2, 0.2333, 0.3, 0.4333, 0.5] -> crosses 0.35 between evals 2 and 3 at f = 0.05/0.1333 = 0.375
    assert out["table"]["fixed"]["rollouts_to_target"]["mean"] == pytest.approx(237.5)
    # other smoothed: [0.2, 0.4, 0.5, 0.5, 0.5] -> crosses at f = 0.15 / 0.2 = 0.75 of the first interval: 75
    assert out["table"]["other"]["rollouts_vs_fixed"]["mean"] == pytest.approx(75 / 237.5)


def test_persistence_counts_transitions_of_the_same_row(tmp_path):
    # row 1: informative (3/8) at step 0, constant (8/8) at step 4, informative at 8 -> transitions 10, 01
    # row 2: constant at 0 and at 4 -> 00.  P(inf | inf) = 0/1, P(inf | const) = 1/2; gaps 4, 4, 4
    lines = [{"step": 0, "prompts": [["carry", 8, 3, 8, [], 1], ["easy", 8, 8, 8, [], 2]]},
             {"step": 4, "prompts": [["carry", 8, 8, 8, [], 1], ["easy", 8, 8, 8, [], 2]]},
             {"step": 8, "prompts": [["carry", 8, 5, 8, [], 1], ["easy", 0, 0, 0, [], 2]]}]
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = sampler_traces.persistence([path])
    assert p["p_informative_after_informative"] == 0.0 and p["p_informative_after_constant"] == 0.5
    assert p["revisits"] == 3 and p["mean_gap_steps"] == 4.0
    s = sampler_traces.summary([path])
    # generated 8+8+8 carry, 8+8 easy -> carry 24/40; carry informative groups 2 of 2 informative in all
    assert s["carry"]["generated_share"] == pytest.approx(0.6) and s["carry"]["informative_share"] == 1.0
    assert s["easy"]["success_rate"] == 1.0 and s["easy"]["rollouts_per_candidate"] == pytest.approx(16 / 3)


def test_train_scale_shrinks_the_train_pool_only(tmp_path):
    import sample_efficiency as bench
    paths = bench.make_task(tmp_path, teacher_error=0.9, train_scale=0.25)
    rows = {name: [json.loads(x) for x in paths[name].read_text().splitlines()] for name in ("train", "eval")}
    kinds = {name: {k: sum(r["kind"] == k for r in rs) for k in ("easy", "carry", "product")}
             for name, rs in rows.items()}
    assert kinds["train"] == {"easy": 38, "carry": 50, "product": 38}       # round(150/4), 200/4, round(150/4)
    assert kinds["eval"] == {"easy": 100, "carry": 150, "product": 100}      # the held-out set is unchanged
    assert not {r["prompt"] for r in rows["train"]} & {r["prompt"] for r in rows["eval"]}
