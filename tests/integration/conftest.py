"""Fixtures shared by the integration tests that train on the quickstart task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def rlkit(*args: str, cwd: Path = ROOT) -> str:
    """Run the CLI as a user would; fail the test with its output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="session")
def warm_start(tmp_path_factory):
    """The quickstart's SFT model and data (imperfect teacher: ~62% held-out accuracy before RL)."""
    tmp = tmp_path_factory.mktemp("qs")
    rlkit("tiny-model", str(tmp / "init"), "--size", "tiny", "--seed", "0")
    rlkit("make-data", "arithmetic", str(tmp / "data"), "--train", "650", "--eval", "250", "--difficulties",
          "2", "--b-digits", "1", "--ops", "+", "--teacher-error", "0.8", "--seed", "0")
    rlkit("sft", "--model", str(tmp / "init"), "--data", str(tmp / "data/train.jsonl"),
          "--answer-column", "teacher_answer", "--output", str(tmp / "sft"), "--steps", "600", "--seed", "0")
    return tmp


def overrides(tmp: Path, out: Path, steps: int = 40) -> list[str]:
    """A quickstart-task recipe shortened to ``steps`` steps on the hf engine, writing to ``out``."""
    return [f"model.name_or_path={tmp / 'sft'}", f"data.train={tmp / 'data/train.jsonl'}",
            f"data.eval={tmp / 'data/eval.jsonl'}", f"train.output_dir={out}", "rollout.engine=hf",
            f"train.steps={steps}", "train.eval_every=0", "train.save_every=20", "train.sample_every=0"]


def train_recipe(recipe: str, tmp: Path, out: Path) -> tuple[list[dict], list[float]]:
    """Train ``recipes/<recipe>.yaml`` on the warm start (40 steps); its metric rows and held-out accuracies."""
    rlkit("train", f"recipes/{recipe}.yaml", *overrides(tmp, out))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
