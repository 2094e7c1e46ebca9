"""Pure helpers of the weight sync and the rollout-server launcher: bucketing, packing, addresses, device split,
the vllm serve command lines (no processes)."""

import pytest
import torch

from rlkit.rollout.http_client import is_loopback, parse_address
from rlkit.rollout.launcher import parse_ids, server_envs, split_evenly
from rlkit.rollout.weights import bucket_manifest, iter_buckets, manifest_bytes, pack_bucket, unpack_bucket


def test_pack_unpack_round_trip_mixed_dtypes():
    bucket = [("a", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
              ("b", torch.tensor([1.5, -2.25], dtype=torch.bfloat16)),
              ("c", torch.tensor([[7]], dtype=torch.int64))]
    manifest = bucket_manifest(bucket)
    assert manifest == [("a", (2, 3), "float32"), ("b", (2,), "bfloat16"), ("c", (1, 1), "int64")]
    flat = pack_bucket(bucket, "cpu")
    # 16-byte aligned: a at 0 (24 B), b at 32 (4 B), c at 48 (8 B)
    assert flat.dtype == torch.uint8 and flat.numel() == manifest_bytes(manifest) == 56
    out = unpack_bucket(flat, manifest)
    for (name, want), (got_name, got) in zip(bucket, out):
        assert name == got_name and got.dtype == want.dtype and torch.equal(got, want)


def test_unpack_refuses_a_manifest_of_another_size():
    flat = pack_bucket([("a", torch.zeros(4))], "cpu")
    with pytest.raises(ValueError, match="16 bytes but its manifest describes 8"):
        unpack_bucket(flat, [("a", (2,), "float32")])


def test_buckets_respect_the_size_and_keep_big_tensors_alone():
    state = {"w0": torch.zeros(100), "w1": torch.zeros(100), "big": torch.zeros(1000), "w2": torch.zeros(10)}
    sizes = [[n for n, _ in b] for b in iter_buckets(state, bucket_bytes=800)]   # 400 B + 400 B fit, 4000 B alone
    assert sizes == [["w0", "w1"], ["big"], ["w2"]]


def test_addresses():
    assert parse_address("10.0.0.5:8000") == ("10.0.0.5", 8000)
    assert parse_address("http://node3:8001/") == ("node3", 8001)
    assert parse_address("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError, match="'node5' is not host:port"):
        parse_address("node5")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.0.0.5") and not is_loopback("node3")


def test_devices_are_split_into_disjoint_server_shares():
    assert parse_ids("4-7", []) == [4, 5, 6, 7] and parse_ids("0,2,5-6", []) == [0, 2, 5, 6]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="cannot give 3 server"):
        split_evenly([0, 1], 3)
    envs = server_envs(2, 2, None, "0-7", cuda=False, kv_cache_gib=2)      # 2 servers x TP 2 on 8 cores
    assert [e["VLLM_CPU_OMP_THREADS_BIND"] for e in envs] == ["0,1|2,3", "4,5|6,7"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2"]
    assert all(e["VLLM_SERVER_DEV_MODE"] == "1" and e["VLLM_CPU_KVCACHE_SPACE"] == "2" for e in envs)


def test_tied_weights_are_sent_under_both_names():
    from rlkit.rollout.weights import sync_state
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    net[1].weight = net[0].weight                                    # tied, like lm_head and embed_tokens
    assert list(net.state_dict()) == ["0.weight", "1.weight"]
    assert list(sync_state(net)) == ["0.weight", "1.weight"]      # vLLM's layer-wise reload needs both


def test_server_command_lines_carry_the_flags_rlkit_needs(tiny_model_dir):
    import argparse
    import shlex

    from rlkit.rollout.launcher import add_parser, plan
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    args = sub.choices["rollout-server"].parse_args(
        ["--model", str(tiny_model_dir), "--servers", "2", "--cpu", "--cpu-cores", "0,1", "--port", "9000",
         "--max-model-len", "256", "--", "--max-num-seqs", "32"])
    servers = plan(args)
    assert [s.port for s in servers] == [9000, 9001]
    line = shlex.split(servers[1].shell_line())
    env, cmd = line[:5], line[5:]
    assert "VLLM_SERVER_DEV_MODE=1" in env and "VLLM_CPU_OMP_THREADS_BIND=1" in env
    assert cmd[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
    text = " ".join(cmd)
    for flag in ("--port 9001", "--host 127.0.0.1", "--dtype float32", "--logprobs-mode processed_logprobs",
                 "--enable-scale-out", '--weight-transfer-config {"backend": "rlkit_gloo"}', "--enforce-eager",
                 "--no-enable-chunked-prefill", "--max-model-len 256"):
        assert flag in text, flag
    assert cmd[-2:] == ["--max-num-seqs", "32"]                     # what follows -- goes to every server


def test_a_non_loopback_bind_needs_allow_remote():
    import argparse

    from rlkit.rollout.launcher import add_parser, plan
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    args = sub.choices["rollout-server"].parse_args(["--model", "M", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="refusing to bind .* 0.0.0.0.*--allow-remote"):
        plan(args)
