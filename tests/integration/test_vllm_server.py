"""rollout.engine=vllm_server with real vLLM (the CPU build): two workers from `rlkit rollout-server`, each pinned
to its own core, a short training run whose every sync passes the canary, then a worker killed mid-generation
(its requests finish on the other worker) that the supervisor restarts and that rejoins with the current weights."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.rollout import SamplingParams
from rlkit.rollout.canary import check_sync, make_probe
from rlkit.rollout.remote import VLLMServerEngine
from tests.conftest import recipe_dict
from tests.integration.test_rollout_server import free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.multiprocess, pytest.mark.timeout(900),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    base = free_port(2)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlkit.cli", "rollout-server", "--model", str(tiny_model_dir),
                             "--workers", "2", "--cpu", "--cpu-cores", "0,1", "--port", str(base), "--kv-cache-gib", "1",
                             "--max-model-len", "256", "--max-restarts", "1"], env=env, cwd=ROOT)
    yield [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], proc
    stop(proc)


def test_two_worker_training_run_passes_the_canary_every_step(server, tiny_model_dir, arith_data, tmp_path):
    addresses, _ = server
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=3, mini_batches=2)  # -> old_logprobs
    cfg["rollout"]["engine"] = {"name": "vllm_server", "addresses": addresses, "connect_timeout_s": 300}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", str(tmp_path / "r.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/weight_version" in r]
    assert len(steps) == 3
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)              # both workers verified each sync
    assert all(r["rollout/logprob_diff"] < 1e-3 for r in steps)             # worker sampling logprobs == trainer's
    assert all(r["rollout/workers_alive"] == 2 for r in steps)
    assert [r["rollout/weight_version"] for r in steps] == [1, 2, 3]
    assert all(r["rollout/sync_buckets"] >= 1 and r["rollout/sync_gb"] > 0 for r in steps)


def test_killed_worker_is_survived_and_rejoins_with_current_weights(server, tiny_model_dir):
    addresses, _ = server
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = VLLMServerEngine(model, tok, addresses=addresses, connect_timeout_s=300, reconnect_every_s=0.0)
    try:
        prompts = [tok(f"{i}+{i % 7}=").input_ids for i in range(64)]
        seeds = list(range(64))
        params = SamplingParams(max_new_tokens=24, temperature=1.0)
        reference = eng.generate(prompts, seeds, params)
        victim = eng.workers[1].info["pid"]
        os.kill(victim, signal.SIGSTOP)       # frozen mid-run: it takes requests but never answers
        threading.Timer(1.0, os.kill, (victim, signal.SIGKILL)).start()
        t0 = time.monotonic()
        again = eng.generate(prompts, seeds, params)
        assert time.monotonic() - t0 < 120
        assert eng.requeued > 0 and eng.workers[1].conn is None
        # seeded per request: the same completions whichever worker finished them
        same = sum(a.token_ids == b.token_ids for a, b in zip(reference, again))
        assert same >= 60, f"only {same}/64 completions identical after the failover"

        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        deadline = time.monotonic() + 300                                      # supervisor restart + vLLM start
        metrics = eng.sync_weights(model)
        while metrics["workers_alive"] < 2 and time.monotonic() < deadline:
            time.sleep(5)
            metrics = eng.sync_weights(model)
        assert metrics["workers_alive"] == 2 and eng.workers[1].info["pid"] != victim
        probe = make_probe(tok, tok("12+3=").input_ids)
        out = check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=eng.version)
        assert out["canary_diff"] < 1e-3                                       # both workers hold the new weights
        assert len(eng.probe_all(*probe)) == 2
    finally:
        eng.close()


def test_multi_turn_episodes_continue_on_the_workers(server, tiny_model_dir):
    """Tool episodes through the workers: the second turn is sampled after the inserted tool result, from the
    episode's token ids, and its sampling log-probs equal the trainer's over the whole episode."""
    from tests.env_fixtures import TOOL_TEMPLATE
    from tests.integration.test_environment_engines import run_and_compare
    addresses, _ = server
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TOOL_TEMPLATE          # rendering happens in the trainer; the workers see token ids only
    eng = VLLMServerEngine(model, tok, addresses=addresses, connect_timeout_s=300, reconnect_every_s=0.0)
    try:
        deadline = time.monotonic() + 300      # the previous test's restarted worker may still be starting
        while eng.sync_weights(model)["workers_alive"] < 2 and time.monotonic() < deadline:
            time.sleep(5)
        assert run_and_compare(eng, model, tok) < 1e-3
    finally:
        eng.close()
