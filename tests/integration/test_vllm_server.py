"""rollout.engine=vllm_server against real stock vLLM servers (the CPU build), started by `rlkit rollout-server`'s
launcher, each pinned to its own core: generation and log-probs equal to the trainer's, the native weight
transfer (rlkit_gloo backend) with versions, the canary catching a skipped update and the tied-head pitfall, a
training run, a killed server (requests moved, restart, rejoin with the current weights), a hung server dropped
after the health timeout, and multi-turn episodes continuing from token ids."""

from __future__ import annotations

import argparse
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

from rlkit.forward import token_logprobs
from rlkit.rollout import SamplingParams
from rlkit.rollout.canary import WeightSyncError, check_sync, make_probe
from rlkit.rollout.server_engine import VLLMServerEngine
from tests.conftest import recipe_dict
from tests.fake_vllm_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.multiprocess, pytest.mark.timeout(900),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]

ROOT = Path(__file__).resolve().parents[2]
PARAMS = SamplingParams(max_new_tokens=24, temperature=1.0)


def launch(model_dir, count: int, cores: str, *extra: str):
    """``count`` supervised stock vLLM servers, as `rlkit rollout-server` runs them: (addresses, procs, stop)."""
    from rlkit.rollout.launcher import add_parser, plan, supervise
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    args = sub.choices["rollout-server"].parse_args(
        ["--model", str(model_dir), "--servers", str(count), "--cpu", "--cpu-cores", cores, "--port",
         str(free_port(count)), "--max-model-len", "256", "--max-restarts", "2", *extra])
    procs = plan(args)
    for p in procs:
        p.env["PYTHONPATH"] = str(ROOT)
        p.start()
    stop = threading.Event()
    threading.Thread(target=supervise, args=(procs, True, 2, stop), daemon=True).start()
    return [f"127.0.0.1:{p.port}" for p in procs], procs, stop


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    """Two supervised stock vLLM servers (one core each)."""
    from rlkit.rollout.launcher import stop_all
    addresses, procs, stop = launch(tiny_model_dir, 2, "0,1")
    yield addresses, procs
    stop.set()
    stop_all(procs)


def _engine(model, tok, addresses, **kw) -> VLLMServerEngine:
    return VLLMServerEngine(model, tok, addresses=addresses, connect_timeout_s=300, reconnect_every_s=0.0,
                            health_every_s=5.0, health_timeout_s=5.0, **kw)


def _perturb(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _rejoin(eng, model, want: int = 2, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s          # supervisor restart + vLLM start
    metrics = eng.sync_weights(model)
    while metrics["servers_alive"] < want and time.monotonic() < deadline:
        time.sleep(5)
        metrics = eng.sync_weights(model)
    return metrics


def _one_token_for_request_0(generate):
    """Wrap a client's ``generate``: request 0 of every call (request id ``rlkit-<call>-0``) stops after one token."""
    import dataclasses

    def wrapped(prompt_ids, seed, params, request_id):
        if request_id.endswith("-0"):
            params = dataclasses.replace(params, max_new_tokens=1)
        return generate(prompt_ids, seed, params, request_id)
    return wrapped


def train_steps(cfg: dict, tmp_path: Path) -> list[dict]:
    """``rlkit train`` of ``cfg`` (output ``tmp_path/run``) in a subprocess: the metrics rows of its steps."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", str(tmp_path / "r.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "rollout/weight_version" in r]


def test_generation_sync_versions_and_canary(servers, tiny_model_dir):
    addresses, _ = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = _engine(model, tok, addresses)
    try:
        assert _rejoin(eng, model)["servers_alive"] == 2
        _perturb(model, 1)                                   # far from the servers' --model weights
        metrics = eng.sync_weights(model)
        assert metrics["sync_buckets"] >= 1 and metrics["sync_gb"] > 0
        assert {s.client.weight_version() for s in eng.fleet.servers} == {eng.current}   # versions on both sides
        prompts = [tok(f"{i}+{i % 7}=").input_ids for i in range(16)]
        out = eng.generate(prompts, list(range(16)), PARAMS)
        for p, c in zip(prompts, out):                         # sampling log-probs == the trainer's
            ids = torch.tensor([c.token_ids])
            lp, _ = token_logprobs(model, [p], ids, torch.ones_like(ids, dtype=torch.bool), pad_id=tok.pad_token_id)
            assert (lp[0] - torch.tensor(c.logprobs)).abs().max().item() < 1e-3
        assert out == eng.generate(prompts, list(range(16)), PARAMS)   # seeded: same completions again
        probe = make_probe(tok, tok("12+3=").input_ids)
        assert check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=1)["canary_diff"] < 1e-3
        assert len(eng.probe_all(*probe)) == 2                 # every server probed
        _perturb(model, 2)                                     # an update that never reaches the servers
        with pytest.raises(WeightSyncError, match="were not applied"):
            check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=2)
    finally:
        eng.close()


def test_named_parameters_leave_the_tied_head_stale(servers, tiny_model_dir, monkeypatch):
    """What vLLM's ModuleSource sends (named_parameters(): the tied lm_head is not there) fails the canary; the
    checkpoint's state dict (rlkit's BucketSource) passes it."""
    from rlkit.rollout import gloo_transfer
    from rlkit.rollout.weights import iter_buckets
    addresses, _ = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in dict(model.named_parameters())
    eng = _engine(model, tok, addresses)
    probe = make_probe(tok, tok("12+3=").input_ids)
    try:
        _rejoin(eng, model)
        _perturb(model, 3)
        monkeypatch.setattr(gloo_transfer.BucketSource, "plan", lambda self: list(
            iter_buckets({n: p.detach() for n, p in self.model.named_parameters()}, self.bucket_bytes)))
        eng.sync_weights(model)
        with pytest.raises(WeightSyncError):
            check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=eng.version)
        monkeypatch.undo()
        eng.sync_weights(model)
        assert check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None,
                          version=eng.version)["canary_diff"] < 1e-3
    finally:
        eng.close()


def test_two_server_training_run_passes_the_canary_every_step(servers, tiny_model_dir, arith_data, tmp_path):
    addresses, _ = servers
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=3, mini_batches=2)  # -> old_logprobs
    cfg["rollout"]["engine"] = {"name": "vllm_server", "addresses": addresses, "connect_timeout_s": 300}
    steps = train_steps(cfg, tmp_path)
    assert len(steps) == 3
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)              # both servers verified each sync
    assert all(r["rollout/logprob_diff"] < 1e-3 for r in steps)             # server sampling logprobs == trainer's
    assert all(r["rollout/servers_alive"] == 2 for r in steps)
    assert [r["rollout/weight_version"] for r in steps] == [1, 2, 3]


def test_killed_server_is_survived_and_rejoins_with_current_weights(servers, tiny_model_dir):
    addresses, procs = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = _engine(model, tok, addresses)
    try:
        assert _rejoin(eng, model)["servers_alive"] == 2
        prompts = [tok(f"{i}+{i % 7}=").input_ids for i in range(64)]
        seeds = list(range(64))
        reference = eng.generate(prompts, seeds, PARAMS)
        victim = procs[1].proc
        client, calls = eng.fleet.servers[1].client, []
        send = client.generate

        def dies_mid_generation(*args):
            calls.append(1)
            if len(calls) == 5:                         # 4 requests in flight there: the server dies
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
            return send(*args)

        client.generate = dies_mid_generation
        again = eng.generate(prompts, seeds, PARAMS)
        client.generate = send
        assert not eng.fleet.servers[1].alive
        assert again == reference                       # seeded per request: identical whichever server finished
        _perturb(model, 4)
        metrics = _rejoin(eng, model)
        assert metrics["servers_alive"] == 2 and procs[1].proc is not victim   # restarted by the supervisor
        probe = make_probe(tok, tok("12+3=").input_ids)
        out = check_sync(eng, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=eng.version)
        assert out["canary_diff"] < 1e-3 and len(eng.probe_all(*probe)) == 2   # rejoined with the new weights
    finally:
        eng.close()


def test_hung_server_is_dropped_after_the_health_timeout(servers, tiny_model_dir):
    addresses, procs = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = _engine(model, tok, addresses)
    try:
        assert _rejoin(eng, model)["servers_alive"] == 2
        prompts = [tok(f"{i}+{i % 5}=").input_ids for i in range(48)]
        reference = eng.generate(prompts, list(range(48)), PARAMS)
        procs[0].signal(signal.SIGSTOP)                 # frozen: accepts connections, never answers
        try:
            again = eng.generate(prompts, list(range(48)), PARAMS)
        finally:
            procs[0].signal(signal.SIGCONT)
        assert not eng.fleet.servers[0].alive and "hung" in eng.fleet.servers[0].error
        assert again == reference and eng.requeued > 0
        assert _rejoin(eng, model)["servers_alive"] == 2       # answers again: rejoins at the next sync
    finally:
        eng.close()


def test_multi_turn_episodes_continue_on_the_servers(servers, tiny_model_dir):
    """Tool episodes through the servers: the second turn is sampled after the inserted tool result, from the
    episode's token ids, and its sampling log-probs equal the trainer's over the whole episode."""
    from tests.env_fixtures import TOOL_TEMPLATE
    from tests.integration.test_environment_engines import run_and_compare
    addresses, _ = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TOOL_TEMPLATE          # rendering happens in the trainer; the servers see token ids only
    eng = _engine(model, tok, addresses)
    try:
        _rejoin(eng, model)
        assert run_and_compare(eng, model, tok) < 1e-3
    finally:
        eng.close()


def test_partial_rollouts_span_an_update_with_per_token_versions(servers, tiny_model_dir):
    """A weight update while requests are in flight (pause mode keep): they keep their tokens, each token records
    the version that sampled it, and its sampling log-prob is that version's (old model before the update, new
    model after it: measured equal to the new model's teacher-forced log-probs within 1e-3, so vLLM recomputes the
    kept requests' KV cache after the update -- pause clears the cache). Request 0 asks for one token, the rest
    for 160, so the first completion comes back while the others are still decoding, whatever the speed of the
    machine (all 160-token requests start together and would otherwise finish together)."""
    import copy
    addresses, _ = servers
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = _engine(model, tok, addresses)
    try:
        _rejoin(eng, model)
        for s in eng.fleet.servers:
            s.client.generate = _one_token_for_request_0(s.client.generate)
        old, v = copy.deepcopy(model), eng.version
        accept, synced = eng._versions, []

        def update_after_the_first_completion(g, floor):
            if not synced:                    # the other requests are still decoding on the servers
                synced.append(1)
                _perturb(model, 5)
                eng.sync_weights(model)
            return accept(g, floor)

        eng._versions = update_after_the_first_completion
        prompts = [tok(f"{i}*{i % 9}=").input_ids for i in range(32)]
        out = eng.generate(prompts, list(range(32)), SamplingParams(max_new_tokens=160, temperature=1.0))
        eng._versions = accept
        assert len(out[0].token_ids) == 1                        # the trigger (it was sent before the update)
        spanning = [c for c in out if set(c.token_versions) == {v, v + 1}]
        assert spanning, "no request was in flight across the update"
        for p, c in zip(prompts, out):
            assert c.token_versions == sorted(c.token_versions) and set(c.token_versions) <= {v, v + 1}
            ids = torch.tensor([c.token_ids])
            mask = torch.ones_like(ids, dtype=torch.bool)
            before, _ = token_logprobs(old, [p], ids, mask, pad_id=tok.pad_token_id)
            after, _ = token_logprobs(model, [p], ids, mask, pad_id=tok.pad_token_id)
            newer = torch.tensor(c.token_versions) == v + 1
            want = torch.where(newer, after[0], before[0])
            assert (want - torch.tensor(c.logprobs)).abs().max().item() < 1e-3
            if newer.any():                   # really the new weights: the old ones give other log-probs
                assert (before[0][newer] - torch.tensor(c.logprobs)[newer]).abs().mean().item() > 1e-2
    finally:
        eng.close()


def test_async_partial_rollout_training_run_stays_within_k(servers, tiny_model_dir, arith_data, tmp_path):
    """k = 1 with partial rollouts: every token trained at step s was sampled by version s-1 or s, every sync
    passes the canary, and the run finishes with its checkpoint."""
    addresses, _ = servers
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=4, mini_batches=2)
    cfg["rollout"].update(engine={"name": "vllm_server", "addresses": addresses, "connect_timeout_s": 300},
                          max_staleness=1, partial_rollouts=True, max_new_tokens=48)
    steps = train_steps(cfg, tmp_path)
    assert [r["rollout/staleness"] for r in steps] == [0, 1, 1, 1]            # launched one version back
    assert all(0 <= r["rollout/staleness_max"] <= 1 for r in steps[1:])        # per token: admission control
    assert all(0 <= r["rollout/partial_frac"] <= 1 for r in steps[1:])
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)
    assert (tmp_path / "run/checkpoints/step_000004").is_dir()


def test_a_server_without_runtime_lora_gets_merged_weights_or_a_clear_refusal(servers, tiny_model_dir):
    from rlkit.config import ModelConfig
    from rlkit.modeling import load_causal_lm, load_tokenizer
    addresses, _ = servers
    mcfg = ModelConfig(name_or_path=str(tiny_model_dir), lora={"r": 8, "alpha": 16.0, "sync": "adapter"})
    policy, tok = load_causal_lm(mcfg), load_tokenizer(mcfg)
    with pytest.raises(ValueError, match=r"cannot load LoRA adapters at runtime: .*VLLM_ALLOW_RUNTIME_LORA_UPDATING"
                                         r".*rlkit rollout-server --lora-rank R"):
        _engine(policy, tok, addresses, lora=mcfg.lora)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if ".lora_B." in n:
                p.fill_(0.05)
    eng = _engine(policy, tok, addresses, lora=mcfg.lora.model_copy(update={"sync": "auto"}))
    try:
        assert eng.adapters is None and eng.last_sync["sync_buckets"] >= 1      # auto: merged weights
        print("merged sync_gb:", eng.last_sync["sync_gb"])
        probe = make_probe(tok, tok("12+3=").input_ids)
        assert check_sync(eng, policy, probe, pad_id=tok.pad_token_id, tolerance=None, version=0)["canary_diff"] < 1e-3
    finally:
        eng.close()
