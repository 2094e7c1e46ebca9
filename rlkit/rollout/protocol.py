"""Wire protocol between the trainer (``rollout.engine: vllm_server``) and ``rlkit rollout-server`` workers.

Two channels per (trainer process, worker) pair:

* **Control**: a ``multiprocessing.connection`` socket with HMAC authentication (``RLKIT_ROLLOUT_AUTHKEY``).
  Messages are pickled dicts with an ``op`` key (pickle: only connect to workers you started; the authkey keeps
  others out). Every trainer process (rank) opens its own control connection to every worker.
* **Weights**: a torch.distributed process group of the trainer's rank 0 (group rank 0) and the worker's
  tensor-parallel ranks (group ranks 1..T) -- gloo on CPU, NCCL on GPU -- created from a TCPStore the trainer
  hosts. One group per worker, so a restarted worker can rejoin alone. Weights travel as whole buckets: each
  bucket is one flat uint8 tensor (all its parameters concatenated) and one broadcast, never one call per
  parameter; the manifest sent on the control channel says how to cut it back into named tensors.

Messages (trainer -> worker, and the worker's reply):

=========  =============================================================  ====================================
op         fields                                                         reply
=========  =============================================================  ====================================
hello      protocol                                                       hello: worker, version, run_id, info
generate   call, items=[(index, prompt_ids, seed)], params, version       completions (streamed, see below)
cancel     call                                                           (none; in-flight requests aborted)
join       addr, port, prefix, backend, timeout_s                         joined
sync       run_id, version, manifest=[[(name, shape, dtype)], ...]        synced: version, seconds
probe      prompt_ids, response_ids                                       probe: logprobs
bye        (none)                                                         (connection closed)
=========  =============================================================  ====================================

While a ``generate`` call runs, the worker sends ``{"op": "completions", "call", "items": [(index, Completion)]}``
as soon as requests finish (every engine step that finished some), and ``{"op": "alive"}`` every
``HEARTBEAT_S`` seconds otherwise, so the trainer can tell a slow worker from a dead or hung one. A worker
answers ``{"op": "error", "message"}`` to a request it cannot serve (wrong protocol, a ``generate`` tagged with
another weight version, an exception in the engine). A ``sync`` or ``probe`` waits until the worker's in-flight
requests have finished, so weights never change in the middle of a completion.

Versions: both sides count syncs. A worker starts at version 0 (the weights of ``--model``) with no run id; after
a sync it holds ``(run_id, version)`` of the trainer that sent it. ``generate`` carries the trainer's version and
the worker refuses a mismatch, so a completion can never come silently from other weights.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from rlkit.lora import is_peft, merged_state

PROTOCOL_VERSION = 1
HEARTBEAT_S = 2.0
AUTHKEY_ENV = "RLKIT_ROLLOUT_AUTHKEY"
_LOCAL_DEFAULT_KEY = b"rlkit-local-rollout"


class RolloutWorkerError(RuntimeError):
    """A rollout worker is unreachable, died, hung, or refused a request."""


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"rollout worker address '{address}' is not host:port (e.g. 127.0.0.1:51300)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authkey(host: str) -> bytes:
    """The shared secret: ``RLKIT_ROLLOUT_AUTHKEY``; a fixed default is allowed only on loopback addresses."""
    key = os.environ.get(AUTHKEY_ENV)
    if key:
        return key.encode()
    if not is_loopback(host):
        raise ValueError(f"rollout workers on '{host}' (not loopback) need a shared secret: set {AUTHKEY_ENV} to the "
                         "same value for `rlkit rollout-server` and the trainer")
    return _LOCAL_DEFAULT_KEY


# ---------------------------------------------------------------------------------------------- buckets
def sync_state(model) -> dict[str, torch.Tensor]:
    """The tensors a weight sync sends: the whole state dict, tied duplicates included.

    Sending a tied ``lm_head.weight`` again looks redundant, but vLLM's layer-wise in-place reload treats the
    head as its own layer: when that layer receives nothing it keeps its old values, and the engine then
    samples from a stale head. With the head left out, the canary measured 5e-3 on the tiny model.

    This dict holds the model's own tensors: on a sharded model (FSDP2, ZeRO-3) those are shards. The engines
    sync through :func:`iter_sync_buckets`, which gathers one bucket at a time."""
    if is_peft(model):   # LoRA: full W + (alpha/r) B A weights under the base model's names (rlkit/lora.py)
        return merged_state(model)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def iter_buckets(state: dict[str, torch.Tensor], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Split a state dict into consecutive buckets of at most ``bucket_bytes`` (a larger tensor is alone).

    Sizes are those of the *full* tensors, so this also plans the buckets of a sharded model (FSDP2 DTensors,
    ZeRO-3 partitioned parameters) without gathering anything."""
    bucket, size = [], 0
    for name, tensor in state.items():
        nbytes = full_numel(tensor) * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def bucket_manifest(bucket: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, full_shape(t), str(t.dtype).replace("torch.", "")) for name, t in bucket]


# ---------------------------------------------------------------------------------------------- sharded models
# A weight sync of a sharded policy (FSDP2 via accelerate's fsdp_version 2, DeepSpeed ZeRO-3) never materialises
# the whole model on one rank: ``sync_sources`` names the (still sharded) tensors, ``iter_buckets`` plans buckets
# from their full sizes, and ``gather_buckets`` gathers one bucket at a time -- peak extra memory is one bucket.
# Gathering is a collective: EVERY rank must iterate the same buckets in the same order (the colocated engines
# do, one per rank; ``vllm_server`` makes ranks > 0 join rank 0's push with ``drain``).
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def _is_zero3(t: torch.Tensor) -> bool:
    """A DeepSpeed ZeRO-3 partitioned parameter (the test of ``deepspeed...partition_parameters.is_zero_param``)."""
    return getattr(t, "ds_id", None) is not None


def full_shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.ds_shape) if _is_zero3(t) else tuple(t.shape)     # a DTensor's .shape is already the global one


def full_numel(t: torch.Tensor) -> int:
    return int(t.ds_numel) if _is_zero3(t) else t.numel()


def is_sharded(model) -> bool:
    """True when a sync of ``model`` needs collectives (some parameter is an FSDP2 DTensor or ZeRO-3 partitioned)."""
    return any(_is_dtensor(p) or _is_zero3(p) for p in model.parameters())


def hf_name(name: str) -> str:
    """A parameter name without wrapper prefixes (DDP ``module.``, FSDP1, activation checkpointing, torch.compile)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def sync_sources(model) -> dict[str, torch.Tensor]:
    """What a weight sync sends, under the Hugging Face checkpoint's names, *not yet gathered*: plain tensors,
    FSDP2 DTensors (global shape, local shard) or ZeRO-3 parameters. Tied duplicates included (see
    :func:`sync_state`). LoRA (peft) models go through :func:`sync_state`'s merged weights."""
    if is_peft(model):
        return sync_state(model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return {hf_name(name): t for name, t in model.state_dict(keep_vars=True).items()}


@contextmanager
def gathered(bucket: list[tuple[str, torch.Tensor]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The full tensors of one bucket, valid inside the ``with`` block (a collective on sharded tensors)."""
    zero3 = [t for _, t in bucket if _is_zero3(t)]
    if not zero3:
        with torch.no_grad():
            yield [(name, t.full_tensor() if _is_dtensor(t) else t.detach()) for name, t in bucket]
        return
    try:
        import deepspeed
    except ImportError as exc:    # a ZeRO-3 parameter without deepspeed cannot happen; say so if it does
        raise ImportError("gathering ZeRO-3 parameters needs deepspeed: pip install 'rlkit[deepspeed]'") from exc
    with deepspeed.zero.GatheredParameters(zero3, modifier_rank=None):
        # cloned: the gathered storage is freed again when the block ends, and a consumer (vLLM's layer-wise
        # reload) may keep a reference until its layer is complete
        yield [(name, t.detach().clone()) for name, t in bucket]


def gather_buckets(buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Full tensors, one bucket at a time (see :func:`gathered`)."""
    for bucket in buckets:
        with gathered(bucket) as full:
            yield full


def iter_sync_buckets(model, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The weights a sync sends, as buckets of full tensors of at most ``bucket_bytes``, gathered lazily."""
    return gather_buckets(iter_buckets(sync_sources(model), bucket_bytes))


def drain(model, bucket_bytes: int) -> None:
    """Ranks that send nothing (``vllm_server``, ranks > 0): take part in the gathers of a sharded model's sync."""
    if is_sharded(model):
        for _ in iter_sync_buckets(model, bucket_bytes):
            pass


ALIGN = 16   # every tensor starts at a multiple of 16 bytes inside a bucket (so it can be viewed in its dtype)


def _layout(manifest) -> tuple[list[int], int]:
    """Byte offset of each tensor in the flat bucket, and the bucket's total size (with alignment padding)."""
    offsets, end = [], 0
    for _, shape, dtype in manifest:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + _nbytes(shape, dtype)
    return offsets, end


def manifest_bytes(manifest: list[tuple[str, tuple[int, ...], str]]) -> int:
    return _layout(manifest)[1]


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def pack_bucket(bucket: list[tuple[str, torch.Tensor]], device: torch.device | str) -> torch.Tensor:
    """All tensors of a bucket in one flat uint8 tensor on ``device`` (manifest order, 16-byte aligned)."""
    offsets, total = _layout(bucket_manifest(bucket))
    flat = torch.empty(total, dtype=torch.uint8, device=device)                     # [bucket bytes]
    for (_, t), start in zip(bucket, offsets):
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        flat[start:start + raw.numel()].copy_(raw)
    return flat


def unpack_bucket(flat: torch.Tensor, manifest: list[tuple[str, tuple[int, ...], str]]
                  ) -> list[tuple[str, torch.Tensor]]:
    """Inverse of :func:`pack_bucket`: named views into ``flat`` (uint8 [bucket bytes])."""
    offsets, total = _layout(manifest)
    if total != flat.numel():
        raise RolloutWorkerError(f"weight bucket has {flat.numel()} bytes but its manifest describes {total}")
    return [(name, flat[start:start + _nbytes(shape, dtype)].view(getattr(torch, dtype)).view(shape))
            for (name, shape, dtype), start in zip(manifest, offsets)]


# ---------------------------------------------------------------------------------------------- groups
def open_group(addr: str, port: int, prefix: str, rank: int, world: int, backend: str, timeout_s: float):
    """A process group of ``world`` ranks outside the default group (the trainer keeps its own DDP group)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(addr, port, None, False, timeout)
    store = dist.PrefixStore(prefix, store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world, dist.ProcessGroupNCCL.Options())
    return dist.ProcessGroupGloo(store, rank, world, timeout)


def host_store(timeout_s: float):
    """The trainer's TCPStore server for the weight groups (an ephemeral port on all interfaces)."""
    return dist.TCPStore("0.0.0.0", 0, None, True, datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


def broadcast(group, tensor: torch.Tensor):
    """Start a broadcast from group rank 0; returns the work handle (``.wait()``)."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.broadcast([tensor], opts)


def receive_buckets(group, manifests: list, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """Worker side: receive every bucket of a sync in order, yielding named tensors (feeds ``reload_weights``)."""
    for manifest in manifests:
        flat = torch.empty(manifest_bytes(manifest), dtype=torch.uint8, device=device)   # [bucket bytes]
        broadcast(group, flat).wait()
        yield from unpack_bucket(flat, manifest)


def local_address(conn) -> str:
    """The local IP of a control connection: the address the worker can reach this process at."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return sock.getsockname()[0]
    finally:
        sock.close()
