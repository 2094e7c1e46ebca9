"""Colocated vLLM under `accelerate launch --num_processes 2`: every rank runs its own engine on its share of the
prompts (vLLM's external launcher; ranks form "external data parallel" groups), syncs it after every step and
passes the canary."""

import importlib.util
import json
import subprocess

import pytest
import yaml

from tests.conftest import accelerate_cpu_cmd, recipe_dict

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.vllm, pytest.mark.timeout(900),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]


def test_each_rank_runs_its_own_engine(tiny_model_dir, arith_data, tmp_path):
    out = tmp_path / "run"
    cfg = recipe_dict(tiny_model_dir, arith_data, out, steps=3, prompts_per_step=4, micro_batch_size=4,
                      mini_batches=2)
    cfg["rollout"]["engine"] = {"name": "vllm", "kv_cache_gib": 1, "max_model_len": 128}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    cmd, env = accelerate_cpu_cmd(2, 29533)
    proc = subprocess.run(cmd + ["train", str(tmp_path / "r.yaml")], env=env, capture_output=True, text=True,
                          timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]   # a clean exit: vLLM's groups torn down in order
    assert "training on 2 process(es) (MULTI_CPU" in proc.stdout + proc.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/weight_version" in r]
    assert [r["rollout/weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)     # averaged over both ranks' engines
    assert all(r["rollout/logprob_diff"] < 1e-3 for r in steps)
