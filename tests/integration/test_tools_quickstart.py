"""The tool showcase end to end (scripts/tools_quickstart.sh, shortened): RL teaches the tiny model to call
`multiply` for 2-digit x 2-digit products. The SFT teacher calls the tool on 25 % of the problems and guesses on
the rest, so the warm-started model rarely calls it greedily; after GRPO with the exact-match reward on episodes
held-out greedy accuracy and the tool-call rate must both rise clearly."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import rlkit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_rl_teaches_the_tiny_model_to_call_the_tool(tmp_path):
    rlkit("tiny-model", str(tmp_path / "init"), "--size", "tiny", "--tools", "--seed", "0")
    rlkit("make-data", "tool_multiply", str(tmp_path / "data"), "--train", "2000", "--eval", "200",
          "--tool-rate", "0.25", "--seed", "0")
    rlkit("sft", "--model", str(tmp_path / "init"), "--data", str(tmp_path / "data/train.jsonl"),
          "--messages-column", "teacher_messages", "--tools", "rlkit.tasks.tool_multiply:multiply",
          "--output", str(tmp_path / "sft"), "--steps", "1500", "--batch-size", "16", "--lr", "3e-3",
          "--seed", "0")
    out = tmp_path / "grpo"
    rlkit("train", "recipes/tools_quickstart.yaml", f"model.name_or_path={tmp_path / 'sft'}",
          f"data.train={tmp_path / 'data/train.jsonl'}", f"data.eval={tmp_path / 'data/eval.jsonl'}",
          f"train.output_dir={out}", "train.steps=20", "train.eval_every=0", "train.sample_every=0")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    before, after = evals[0], evals[-1]
    assert after["eval/accuracy"] >= before["eval/accuracy"] + 0.15, (before, after)
    assert after["eval/tool_use_frac"] >= before["eval/tool_use_frac"] + 0.3, (before, after)
    steps = [r for r in rows if "environment/token_drift" in r]
    assert all(r["environment/token_drift"] <= 0.5 for r in steps)     # measured every step, below the stop limit
    assert steps[-1]["environment/tool_calls_mean"] > steps[0]["environment/tool_calls_mean"]
