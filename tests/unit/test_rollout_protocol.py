"""Pure helpers of the vllm_server protocol: bucketing, packing, addresses, keys, device split (no processes)."""

import pytest
import torch

from rlkit.rollout.protocol import (authkey, bucket_manifest, is_loopback, iter_buckets, manifest_bytes, pack_bucket,
                                    parse_address, unpack_bucket)
from rlkit.rollout.server import parse_ids, split_evenly, worker_envs


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
    with pytest.raises(RuntimeError, match="16 bytes but its manifest describes 8"):
        unpack_bucket(flat, [("a", (2,), "float32")])


def test_buckets_respect_the_size_and_keep_big_tensors_alone():
    state = {"w0": torch.zeros(100), "w1": torch.zeros(100), "big": torch.zeros(1000), "w2": torch.zeros(10)}
    sizes = [[n for n, _ in b] for b in iter_buckets(state, bucket_bytes=800)]   # 400 B + 400 B fit, 4000 B alone
    assert sizes == [["w0", "w1"], ["big"], ["w2"]]


def test_addresses_and_keys(monkeypatch):
    assert parse_address("10.0.0.5:51300") == ("10.0.0.5", 51300)
    assert parse_address("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError, match="'node5' is not host:port"):
        parse_address("node5")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("10.0.0.5")
    monkeypatch.delenv("RLKIT_ROLLOUT_AUTHKEY", raising=False)
    assert authkey("127.0.0.1")
    with pytest.raises(ValueError, match="set RLKIT_ROLLOUT_AUTHKEY"):
        authkey("10.0.0.5")
    monkeypatch.setenv("RLKIT_ROLLOUT_AUTHKEY", "s3cret")
    assert authkey("10.0.0.5") == b"s3cret"


def test_devices_are_split_into_disjoint_worker_shares():
    assert parse_ids("4-7", []) == [4, 5, 6, 7] and parse_ids("0,2,5-6", []) == [0, 2, 5, 6]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="cannot give 3 worker"):
        split_evenly([0, 1], 3)
    envs = worker_envs(2, 2, None, "0-7", cuda=False)      # 2 workers x TP 2 on 8 cores
    assert [e["VLLM_CPU_OMP_THREADS_BIND"] for e in envs] == ["0,1|2,3", "4,5|6,7"]
    assert [e["OMP_NUM_THREADS"] for e in envs] == ["2", "2"]


def test_tied_weights_are_sent_under_both_names():
    from rlkit.rollout.protocol import sync_state
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    net[1].weight = net[0].weight                                    # tied, like lm_head and embed_tokens
    assert list(net.state_dict()) == ["0.weight", "1.weight"]
    assert list(sync_state(net)) == ["0.weight", "1.weight"]      # vLLM's layer-wise reload needs both


def test_trainer_and_worker_on_the_same_gpu_is_refused(monkeypatch):
    import socket
    from types import SimpleNamespace

    from rlkit.rollout.protocol import RolloutWorkerError
    from rlkit.rollout.remote import _check_overlap, _Worker
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid="GPU-aaaa"))
    here = socket.gethostname()
    ok = _Worker("127.0.0.1:1", info={"host": here, "info": {"devices": ["GPU-bbbb"]}})
    _check_overlap(ok, rank=0)                                         # different GPU: fine
    elsewhere = _Worker("10.0.0.9:1", info={"host": "other-node", "info": {"devices": ["GPU-aaaa"]}})
    _check_overlap(elsewhere, rank=0)                                  # same uuid string on another host: fine
    clash = _Worker("127.0.0.1:2", info={"host": here, "info": {"devices": ["GPU-bbbb", "GPU-aaaa"]}})
    with pytest.raises(RolloutWorkerError, match="trainer rank 1 and rollout worker 127.0.0.1:2 share GPU GPU-aaaa"):
        _check_overlap(clash, rank=1)
