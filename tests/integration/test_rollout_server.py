"""The vllm_server protocol end to end with real worker processes and a fake engine (tests/fake_rollout_backend):
balancing, streamed results, bucketed gloo weight sync with versions, and every failure mode the trainer must
survive or report (killed worker, hung worker, crashed engine, nothing listening, wrong key, stale version)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

import pytest
import torch

from rlkit.rollout import SamplingParams
from rlkit.rollout.protocol import PROTOCOL_VERSION, RolloutWorkerError
from rlkit.rollout.remote import VLLMServerEngine
from tests.fake_rollout_backend import checksum, fake_completion

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
FAKE = "tests.fake_rollout_backend:FakeBackend"
PARAMS = SamplingParams(max_new_tokens=5)


def free_port(count: int = 1) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count < 65000 and all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _env(**extra: str) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"} | extra


def start_worker(port: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlkit.rollout.worker", "--model", "fake", "--port", str(port),
                             "--backend", FAKE], env=_env(**env), cwd=ROOT)


def start_server(port: int, workers: int, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlkit.cli", "rollout-server", "--model", "fake", "--workers",
                             str(workers), "--port", str(port), "--cpu", "--cpu-cores", "0,1", "--backend", FAKE, *extra],
                            env=_env(**env), cwd=ROOT)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 32))


def engine(addresses: list[str], net: torch.nn.Module, **kw) -> VLLMServerEngine:
    opts = dict(connect_timeout_s=60, worker_timeout_s=30, sync_timeout_s=30, reconnect_every_s=0.0,
                sync_bucket_mb=0.01)
    return VLLMServerEngine(net, None, addresses=addresses, **(opts | kw))


def requests(n: int) -> tuple[list[list[int]], list[int]]:
    return [[1 + i % 7, 2, 3] for i in range(n)], [1000 + 13 * i for i in range(n)]


def expected(prompts, seeds):
    return [fake_completion(p, s, PARAMS) for p, s in zip(prompts, seeds)]


def same(got, want) -> bool:
    return all((g.token_ids, g.logprobs, g.finish_reason) == (w.token_ids, w.logprobs, w.finish_reason)
               for g, w in zip(got, want)) and len(got) == len(want)


@pytest.fixture
def two_workers():
    base = free_port(2)
    procs = [start_worker(base, FAKE_STEP_S="0.01"), start_worker(base + 1, FAKE_STEP_S="0.01")]
    yield [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], procs
    stop(*procs)


def test_generate_balances_streams_and_matches(two_workers):
    addresses, _ = two_workers
    eng = engine(addresses, model())
    prompts, seeds = requests(60)
    out = eng.generate(prompts, seeds, PARAMS)
    assert same(out, expected(prompts, seeds))                        # results land at the right index
    assert len({c.extras["pid"] for c in out}) == 2                    # both workers served requests
    one = engine(addresses[:1], model())                              # the result does not depend on the worker count
    assert same(one.generate(prompts, seeds, PARAMS), out)
    eng.close()
    one.close()


def test_sync_is_bucketed_versioned_and_verified_per_worker(two_workers):
    addresses, _ = two_workers
    net = model()
    eng = engine(addresses, net)
    probes = eng.probe_all([1, 2], [3, 4])                             # pushed on connect (version 0)
    assert set(probes) == {f"worker {a}" for a in addresses}
    assert all(v[0] == pytest.approx(checksum(net.state_dict().values()), rel=1e-9) for v in probes.values())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    out = eng.sync_weights(net)
    assert out["weight_version"] == 1 and out["workers_alive"] == 2
    # 10 KiB buckets: [weight0 (16 KiB, alone)], [bias0 + weight1 + bias1 (8.4 KiB)] -- never one call per tensor
    assert out["sync_buckets"] == 2
    state_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    assert out["sync_gb"] == pytest.approx(state_bytes / 1e9)
    new = checksum(net.state_dict().values())
    assert all(v[0] == pytest.approx(new, rel=1e-9) for v in eng.probe_all([1, 2], [3]).values())
    prompts, seeds = requests(8)
    assert same(eng.generate(prompts, seeds, PARAMS), expected(prompts, seeds))   # version 1 accepted
    eng.close()


def test_worker_refuses_a_request_for_other_weights(two_workers):
    addresses, _ = two_workers
    eng = engine(addresses[:1], model())              # this run pushed its weights: worker holds (run, v0)
    eng.sync_weights(model())                         # -> v1
    port = int(addresses[0].rsplit(":", 1)[1])
    conn = Client(("127.0.0.1", port), authkey=b"rlkit-local-rollout")
    conn.send({"op": "hello", "protocol": PROTOCOL_VERSION})
    assert conn.recv()["version"] == 1
    conn.send({"op": "generate", "call": 1, "run_id": "another-run", "version": 1, "params": PARAMS,
               "items": [(0, [1], 5)]})
    reply = conn.recv()
    assert reply["op"] == "error" and reply["kind"] == "version"
    conn.send({"op": "hello", "protocol": PROTOCOL_VERSION + 1})
    assert "protocol" in conn.recv()["message"]
    conn.close()
    eng.close()


def test_killed_worker_requests_move_and_restarted_worker_rejoins_with_current_weights():
    base = free_port(2)
    server = start_server(base, 2, "--max-restarts", "1", FAKE_STEP_S="0.2")
    try:
        net = model()
        eng = engine([f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], net)
        victim = eng.workers[1].info["pid"]
        prompts, seeds = requests(80)
        os.kill(victim, signal.SIGSTOP)       # frozen mid-run: it takes requests but never answers
        threading.Timer(1.0, os.kill, (victim, signal.SIGKILL)).start()
        t0 = time.monotonic()
        out = eng.generate(prompts, seeds, PARAMS)
        assert time.monotonic() - t0 < 30
        assert same(out, expected(prompts, seeds))                     # nothing lost, identical results
        assert eng.requeued > 0 and eng.workers[1].conn is None
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(-1.0)
        deadline = time.monotonic() + 60                               # the supervisor restarts it
        while time.monotonic() < deadline:
            metrics = eng.sync_weights(net)
            if metrics["workers_alive"] == 2:
                break
            time.sleep(0.5)
        assert metrics["workers_alive"] == 2 and eng.workers[1].info["pid"] != victim
        new = checksum(net.state_dict().values())
        probes = eng.probe_all([1], [2])
        assert len(probes) == 2 and all(v[0] == pytest.approx(new, rel=1e-9) for v in probes.values())
        assert len({c.extras["pid"] for c in eng.generate(prompts, seeds, PARAMS)}) == 2
        eng.close()
    finally:
        stop(server)


def test_hung_worker_is_dropped_and_its_requests_served_elsewhere():
    base = free_port(2)
    procs = [start_worker(base, FAKE_STEP_S="0.01", FAKE_HANG_AFTER_STEPS="3"), start_worker(base + 1)]
    try:
        eng = engine([f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"], model(), worker_timeout_s=4)
        prompts, seeds = requests(40)
        t0 = time.monotonic()
        out = eng.generate(prompts, seeds, PARAMS)
        assert 3 < time.monotonic() - t0 < 20
        assert same(out, expected(prompts, seeds))
        assert eng.workers[0].conn is None and "silent" in eng.workers[0].error
    finally:
        stop(*procs)


def test_every_worker_gone_is_a_clear_error_not_a_hang():
    base = free_port(1)
    proc = start_worker(base, FAKE_STEP_S="0.01", FAKE_CRASH_AFTER_STEPS="2")
    try:
        eng = engine([f"127.0.0.1:{base}"], model())
        t0 = time.monotonic()
        with pytest.raises(RolloutWorkerError, match=r"every rollout worker is gone.*injected engine failure"):
            eng.generate(*requests(10), PARAMS)
        assert time.monotonic() - t0 < 20
        assert proc.wait(timeout=20) == 3                              # the worker exits so a supervisor restarts it
    finally:
        stop(proc)


def test_nothing_listening_names_the_address_and_the_fix():
    port = free_port(1)
    t0 = time.monotonic()
    with pytest.raises(RolloutWorkerError, match=rf"no rollout worker reachable.*127.0.0.1:{port}.*rlkit rollout-server"):
        engine([f"127.0.0.1:{port}"], model(), connect_timeout_s=2)
    assert time.monotonic() - t0 < 10


def test_wrong_authkey_is_named(monkeypatch):
    base = free_port(1)
    proc = start_worker(base, RLKIT_ROLLOUT_AUTHKEY="server-secret")
    try:
        monkeypatch.setenv("RLKIT_ROLLOUT_AUTHKEY", "trainer-secret")
        with pytest.raises(RolloutWorkerError, match="RLKIT_ROLLOUT_AUTHKEY"):
            engine([f"127.0.0.1:{base}"], model(), connect_timeout_s=30)
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_trainer_processes_share_the_workers_and_match_one(tiny_model_dir, arith_data, tmp_path):
    """Every rank talks to every worker; rank 0 alone pushes weights, barriers keep versions in step."""
    import json

    import yaml
    from safetensors.torch import load_file

    from tests.conftest import recipe_dict
    from tests.integration.test_ddp import _launch

    base = free_port(2)
    server = start_server(base, 2)
    try:
        addresses = f"127.0.0.1:{base},127.0.0.1:{base + 1}"
        runs = {}
        for procs in (1, 2):
            out = tmp_path / f"p{procs}"
            cfg = recipe_dict(tiny_model_dir, arith_data, out, steps=2, prompts_per_step=4, micro_batch_size=4,
                              mini_batches=2, adam_eps=1e-4)
            cfg["rollout"].update(engine={"name": "vllm_server", "addresses": addresses, "connect_timeout_s": 60},
                                  canary_every=0)   # the fake engine's probe is a checksum, not log-probs
            cfg["aggregation"] = "seq_mean_token_sum"
            (tmp_path / f"r{procs}.yaml").write_text(yaml.safe_dump(cfg))
            _launch(tmp_path / f"r{procs}.yaml", procs)
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in rows if "loss/total" in r]
            assert [r["rollout/weight_version"] for r in steps] == [1, 2]
            assert all(r["rollout/workers_alive"] == 2 for r in steps)
            runs[procs] = [r[k] for r in steps for k in ("loss/total", "reward/mean")]
            final = load_file(str(out / "final/model.safetensors"))
            synced = checksum(final.values()) + checksum([final["model.embed_tokens.weight"]])  # + tied lm_head
            for port in (base, base + 1):                          # both workers hold the final weights
                conn = Client(("127.0.0.1", port), authkey=b"rlkit-local-rollout")
                conn.send({"op": "probe", "prompt_ids": [1], "response_ids": [2]})
                assert conn.recv()["logprobs"][0] == pytest.approx(synced, rel=1e-6)
                conn.close()
        assert any(abs(x) > 1e-3 for x in runs[1][::2])                  # some step had a real loss
        assert runs[2] == pytest.approx(runs[1], abs=1e-5)
    finally:
        stop(server)
