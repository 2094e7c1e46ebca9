"""Weight sync of sharded policies, the parts that need no process group: bucket planning from full shapes,
Hugging Face names through wrappers, plain models unchanged, ZeRO-3 parameters (faked), and the launch checks.
Real FSDP2 on 2 CPU processes: tests/integration/test_fsdp2_cpu.py."""

from types import SimpleNamespace

import pytest
import torch

from rlkit.dist import check_launch
from rlkit.rollout import weights


def _tied_net():
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 10, bias=False))
    net[2].weight = net[0].weight                                   # tied, like lm_head and embed_tokens
    return net


def test_plain_model_syncs_its_state_dict_in_buckets_tied_duplicates_included():
    net = _tied_net()
    assert not weights.is_sharded(net)
    buckets = list(weights.iter_sync_buckets(net, bucket_bytes=100))
    # 0.weight 160 B alone; 1.weight 64 B + 1.bias 16 B = 80 B; 2.weight 160 B alone
    assert [[n for n, _ in b] for b in buckets] == [["0.weight"], ["1.weight", "1.bias"], ["2.weight"]]
    flat = dict(t for b in buckets for t in b)
    assert list(flat) == list(weights.sync_state(net))
    assert all(torch.equal(flat[k], v) and not v.requires_grad for k, v in weights.sync_state(net).items())
    assert not any(t.requires_grad for t in flat.values())


def test_names_are_the_checkpoint_names_through_wrappers():
    net = _tied_net()
    compiled = torch.compile(net)                                  # lazy: nothing compiles until a forward
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert list(weights.sync_sources(compiled)) == ["0.weight", "1.weight", "1.bias", "2.weight"]
    assert weights.hf_name("model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.mlp.weight") == \
        "model.layers.0.mlp.weight"


def _zero3_param(shape):
    p = torch.nn.Parameter(torch.empty(0))                         # what a ZeRO-3 rank holds between gathers
    p.ds_id, p.ds_shape, p.ds_numel = 7, torch.Size(shape), int(torch.Size(shape).numel())
    return p


def test_zero3_parameters_are_planned_from_their_full_shape():
    state = {"a": _zero3_param((100,)), "b": _zero3_param((100,)), "c": torch.zeros(10)}
    plan = list(weights.iter_buckets(state, bucket_bytes=800))   # 400 B + 400 B fit, then 40 B
    assert [[n for n, _ in b] for b in plan] == [["a", "b"], ["c"]]
    assert weights.bucket_manifest(plan[0]) == [("a", (100,), "float32"), ("b", (100,), "float32")]
    net = torch.nn.Linear(2, 2)
    net.weight = _zero3_param((2, 2))
    assert weights.is_sharded(net)
    with pytest.raises(ImportError, match=r"rlkit\[deepspeed\]"):   # deepspeed is not installed here
        list(weights.gather_buckets(plan))


def test_drain_is_a_no_op_for_full_weights():
    net = _tied_net()
    weights.drain(net, 100)                                        # nothing to gather, no collective


def test_launch_checks(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_launch()
    check_launch(SimpleNamespace(num_processes=1))
    monkeypatch.setenv("WORLD_SIZE", "2")                           # accelerate launch, FSDP config, no GPU
    with pytest.raises(RuntimeError, match="started 2 processes but each one runs alone"):
        check_launch(SimpleNamespace(num_processes=1, distributed_type=SimpleNamespace(value="NO")))
    check_launch(SimpleNamespace(num_processes=2))
    # `accelerate launch --cpu --num_processes 2`: accelerate 1.15 starts one process, sets MASTER_PORT only
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(RuntimeError, match="started only one.*ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu"):
        check_launch()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")                 # the same launcher through mpirun is fine
    check_launch()
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.delenv("MASTER_PORT")                               # `accelerate launch --cpu` of one process
    check_launch()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'rlkit\[deepspeed\]'"):
        check_launch()
