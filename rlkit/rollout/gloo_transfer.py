"""``rlkit_gloo``: a weight-transfer backend for vLLM's native protocol that runs where NCCL cannot (CPU, or GPUs
without a shared NCCL fabric), registered with vLLM's factories by the ``vllm.general_plugins`` entry point that
installing rlkit provides (:mod:`rlkit.rollout.vllm_plugin`). A plain
``vllm serve M --weight-transfer-config '{"backend": "rlkit_gloo"}'`` then receives weights from rlkit.

Protocol (vLLM 0.32's four phases, driven over HTTP by the trainer):

1. ``/init_weight_transfer_engine {master_address, master_port, prefix, world_size, timeout_s}``: every TP worker
   of the server joins a gloo group with the trainer's rank 0 (group rank 0; workers 1..T) through the trainer's
   TCPStore. One group per server, so a restarted server rejoins alone.
2. ``/start_weight_update``: vLLM's layer-wise reload begins (``initialize_layerwise_reload``).
3. ``/update_weights {manifests}``, concurrently with the trainer's broadcasts: one flat uint8 bucket per
   manifest (:mod:`rlkit.rollout.weights`), cut back into named tensors and fed to the model's ``load_weights``
   under checkpoint (Hugging Face) names, so fused parameters (qkv, gate_up) are rebuilt by vLLM itself.
4. ``/finish_weight_update {weight_version}``: ``finalize_layerwise_reload``; the server stamps the version on
   every token it samples from now on.

What is sent is the checkpoint's state dict, tied duplicates included (``weights.sync_sources``): vLLM's own
``ModuleSource`` sends ``named_parameters()``, which skips a tied ``lm_head.weight``, and the layer-wise reload
then keeps the old head (measured: 0.09 mean log-prob error on the tiny model). Deviation from vLLM's base
engine: ``update_weights`` synchronizes CUDA only when the worker has it (``torch.accelerator.synchronize``
raises on CPU).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from vllm.distributed.weight_transfer.base import (ParamMeta, TrainerInitInfo, TrainerWeightTransferEngine,
                                                   WeightSource, WeightTransferEngine, WeightTransferInitInfo,
                                                   WeightTransferUpdateInfo)

from rlkit.rollout.weights import (broadcast, bucket_manifest, full_shape, gather_buckets, iter_buckets,
                                   manifest_bytes, open_group, pack_bucket, sync_sources, unpack_bucket)

BACKEND = "rlkit_gloo"


# ---------------------------------------------------------------------------------------------- server side
@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    prefix: str
    world_size: int
    timeout_s: float = 300.0


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    manifests: list = field(default_factory=list)    # per bucket: [[name, shape, dtype], ...]


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Runs inside every vLLM worker process of a server (created by vLLM from ``--weight-transfer-config``)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config
        rank = 1 + pc.data_parallel_index * pc.world_size + pc.rank       # group rank 0 is the trainer
        self.group = None                                                  # a trainer reconnecting replaces it
        self.group = open_group(init_info.master_address, init_info.master_port, init_info.prefix, rank,
                                init_info.world_size, "gloo", init_info.timeout_s)

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("rlkit_gloo weight transfer is not initialised: call /init_weight_transfer_engine")
        for manifest in update_info.manifests:
            entries = [(name, tuple(shape), dtype) for name, shape, dtype in manifest]
            flat = torch.empty(manifest_bytes(entries), dtype=torch.uint8)                 # [bucket bytes]
            broadcast(self.group, flat).wait()
            self.model.load_weights(unpack_bucket(flat, entries))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.group = None


# ---------------------------------------------------------------------------------------------- trainer side
class BucketSource(WeightSource):
    """The policy's checkpoint tensors (tied duplicates included), planned in buckets of ``bucket_bytes`` and
    gathered one bucket at a time (FSDP2 / ZeRO-3): a ``WeightSource`` for vLLM's trainer engines too."""

    def __init__(self, model: torch.nn.Module, bucket_bytes: int) -> None:
        self.model, self.bucket_bytes = model, bucket_bytes

    def plan(self) -> list[list[tuple[str, torch.Tensor]]]:
        return list(iter_buckets(sync_sources(self.model), self.bucket_bytes))   # nothing gathered yet

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, t.dtype, full_shape(t)) for name, t in sync_sources(self.model).items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in gather_buckets(self.plan()):
            yield from bucket


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = BACKEND
    master_address: str = "127.0.0.1"   # where the server's workers reach the trainer's TCPStore
    master_port: int = 0
    prefix: str = ""
    world_size: int = 2                 # 1 (trainer) + the server's TP x DP workers
    timeout_s: float = 300.0


class GlooTrainerEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """The trainer's end of one server's group. :func:`send_to_all` drives several servers with one gather per
    bucket; ``send_weights`` is the single-server case of it."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source=None, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group = None
        self.weight_version: str | None = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None) -> "GlooTrainerEngine":
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        worker = {"master_address": init_info.master_address, "master_port": init_info.master_port,
                  "prefix": init_info.prefix, "world_size": init_info.world_size, "timeout_s": init_info.timeout_s}
        with ThreadPoolExecutor(max_workers=1) as pool:     # the server blocks in the rendezvous, so do we
            pending = pool.submit(client.init_weight_transfer_engine, worker)
            engine.group = open_group("127.0.0.1", init_info.master_port, init_info.prefix, 0,
                                      init_info.world_size, "gloo", init_info.timeout_s)
            pending.result()
        return engine

    def send_weights(self) -> None:
        failed = send_to_all([self], self.source, self.weight_version)
        if failed:
            raise next(iter(failed.values()))


def send_to_all(engines: list[GlooTrainerEngine], source: BucketSource, version: str | None
                ) -> dict[GlooTrainerEngine, Exception]:
    """One weight update on every engine's server: start, update (each server receiving on a thread while the
    trainer broadcasts each bucket once to every group), finish with ``version``. Returns the engines that failed,
    with their error; the others hold the new weights."""
    failed: dict[GlooTrainerEngine, Exception] = {}
    plan = source.plan()
    info = {"manifests": [[[n, list(s), d] for n, s, d in bucket_manifest(b)] for b in plan]}
    live = _each(engines, lambda e: e.client.start_weight_update(), failed)
    pool = ThreadPoolExecutor(max_workers=max(1, len(live)))
    receiving: dict[GlooTrainerEngine, Future] = {e: pool.submit(e.client.update_weights, info) for e in live}
    try:
        for bucket in gather_buckets(plan):
            flat = pack_bucket(bucket, "cpu")                                          # [bucket bytes] uint8
            works = []
            for e in [e for e in live if e not in failed]:
                try:
                    works.append((e, broadcast(e.group, flat)))
                except RuntimeError as exc:
                    failed[e] = exc
            for e, work in works:
                try:
                    work.wait()
                except RuntimeError as exc:
                    failed[e] = exc
        for e, fut in receiving.items():
            if e not in failed:
                try:
                    fut.result()
                except Exception as exc:   # noqa: BLE001 -- reported per server
                    failed[e] = exc
    finally:
        pool.shutdown(wait=False)          # a server that failed mid-transfer may never answer its update call
    _each([e for e in live if e not in failed], lambda e: e.client.finish_weight_update(version), failed)
    return failed


def _each(engines, fn, failed: dict) -> list:
    """Run ``fn`` on every engine not failed yet (concurrently); record failures; return the ones that worked."""
    todo = [e for e in engines if e not in failed]
    lock = threading.Lock()

    def run(e):
        try:
            fn(e)
        except Exception as exc:   # noqa: BLE001
            with lock:
                failed[e] = exc

    with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        list(pool.map(run, todo))
    return [e for e in todo if e not in failed]
