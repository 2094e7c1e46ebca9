"""Real FSDP2 (torch ``fully_shard``, gloo) on 2 CPU processes: the weight sync gathers full tensors under the
Hugging Face names, lazily (one bucket of gathers at a time), with every rank taking part; a sharded SGD step
matches the unsharded one; the full state dict for ``final/`` is the unsharded model's.

accelerate 1.15 does not enable FSDP on CPU (AcceleratorState sets DistributedType.FSDP only for GPU-like
devices; under ``accelerate launch`` with an FSDP config and no GPU every process runs alone -- rlkit.dist.
check_launch refuses that), so the rlkit-level run (accelerate launch + sharded checkpoints) is in
tests/integration/test_fsdp2.py and needs CUDA. torch itself shards fine on CPU, which is what this file uses.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.multiprocess]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, model_dir: str, errors) -> None:
    try:
        _check(rank, world, port, model_dir)
    except BaseException as exc:  # report to the parent, which fails the test with it
        import traceback
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise SystemExit(1) from exc


def _check(rank: int, world: int, port: int, model_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from rlkit.rollout import weights
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert weights.is_sharded(model) and not weights.is_sharded(ref)
    want = {k: v.detach().clone() for k, v in ref.state_dict().items()}    # HF names, tied lm_head included

    # 1. lazy, bucketed, complete and correct; exactly the bucket's gathers have run when a bucket is yielded
    calls = {"n": 0}
    original = DTensor.full_tensor

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    DTensor.full_tensor = counting
    try:
        bucket_bytes, seen, expected_calls = 64 * 1024, {}, 0
        plan = list(weights.iter_buckets(weights.sync_sources(model), bucket_bytes))
        assert calls["n"] == 0                                                # planning gathers nothing
        for planned, bucket in zip(plan, weights.iter_sync_buckets(model, bucket_bytes)):
            expected_calls += sum(isinstance(t, DTensor) for _, t in planned)
            assert calls["n"] == expected_calls                              # only this bucket was gathered
            size = sum(t.numel() * t.element_size() for _, t in bucket)
            assert size <= bucket_bytes or len(bucket) == 1
            assert [n for n, _ in bucket] == [n for n, _ in planned]
            assert weights.bucket_manifest(planned) == weights.bucket_manifest(bucket)   # manifests pre-gather
            for name, t in bucket:
                assert not isinstance(t, DTensor)
                seen[name] = t.clone()
        assert len(plan) > 3 and expected_calls > 0
    finally:
        DTensor.full_tensor = original
    assert list(seen) == list(want)
    for k in want:
        assert torch.equal(seen[k], want[k]), k

    # 2. vllm_server: only rank 0 consumes; the others join the gathers with drain()
    if rank == 0:
        got = {n: t.clone() for b in weights.iter_sync_buckets(model, 4096) for n, t in b}
        assert all(torch.equal(got[k], want[k]) for k in want)
    else:
        weights.drain(model, 4096)

    # 3. one SGD step, each rank on half the batch == the unsharded model on the whole batch
    torch.manual_seed(0)
    ids = torch.randint(0, ref.config.vocab_size, (4, 12))                 # [B, S], the same on every rank
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref(input_ids=ids, labels=ids).loss.backward()
    opt_ref.step()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    half = ids[rank * 2:(rank + 1) * 2]                                      # FSDP2 averages gradients over ranks
    model(input_ids=half, labels=half).loss.backward()
    opt.step()
    after = {n: t.clone() for b in weights.iter_sync_buckets(model, 1 << 20) for n, t in b}
    moved = 0
    for k, v in ref.state_dict().items():
        assert torch.allclose(after[k], v, atol=2e-5), (k, (after[k] - v).abs().max().item())
        moved += not torch.allclose(v, want[k])
    assert moved > 0

    # 4. what accelerator.get_state_dict does for FSDP2 (trainer.export_final): the full dict on rank 0
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        for k, v in full.items():
            assert torch.allclose(v, after[k]), k
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp2_sync_gathers_lazily_and_matches_unsharded(tiny_model_dir):
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = _free_port()
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tiny_model_dir), errors)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    msgs = []
    while not errors.empty():
        msgs.append(errors.get())
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not msgs, "\n".join(msgs)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
