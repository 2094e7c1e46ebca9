"""rollout.max_staleness: 1 -- generation of step t+1 overlaps training of step t, exactly one version stale."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlkit.config import load_config
from tests.conftest import recipe_dict

ROOT = Path(__file__).resolve().parents[2]


def test_hf_engine_refuses_async(tiny_model_dir, arith_data, tmp_path):
    from rlkit.trainer import train
    cfg = load_config(None, ["rollout.max_staleness=1"], base=recipe_dict(tiny_model_dir, arith_data, tmp_path))
    with pytest.raises(ValueError, match="max_staleness=1 needs an engine.*samples from the training module"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")
def test_vllm_async_is_one_step_stale(tiny_model_dir, arith_data, tmp_path):
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=4)
    cfg["rollout"].update(engine="vllm", max_staleness=1)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", str(tmp_path / "r.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/staleness" in r]
    assert [r["rollout/staleness"] for r in steps] == [0.0, 1.0, 1.0, 1.0]   # first step synchronous
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)               # every sync verified
    assert all(r["rollout/weight_version"] == r["step"] for r in steps)
