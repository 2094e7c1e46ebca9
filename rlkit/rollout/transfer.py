"""Trainer-side weight transport to a fleet of stock vLLM servers, through vLLM's native protocol.

Two backends, named as in the servers' ``--weight-transfer-config``:

* ``rlkit_gloo`` (default; CPU or any machine): rlkit's backend (:mod:`rlkit.rollout.gloo_transfer`), one gloo
  group per server; a sync gathers each bucket once and broadcasts it to every server's group.
* ``nccl`` (GPU servers that the trainer's rank 0 reaches over NCCL): vLLM's own ``NCCLTrainerWeightTransferEngine``
  built by ``WeightTransferTrainerFactory``, one group per server, fed by rlkit's :class:`BucketSource` (the
  checkpoint's tensors, tied head included, not ``named_parameters()``), servers updated one after the other; the
  version is set with ``/update_weight_version``. Not run in rlkit's CI (no GPU there).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from rlkit.rollout.http_client import ServerClient


@dataclass(frozen=True)
class GroupSpec:
    """Where one server's weight group meets: the trainer's address and store port, a unique prefix, its size."""

    master_address: str
    master_port: int
    prefix: str
    world_size: int
    timeout_s: float


def open_sender(backend: str, client: ServerClient, source, spec: GroupSpec):
    """Rank 0: create one server's weight group and return the trainer engine that sends to it."""
    from rlkit.rollout.vllm_plugin import register
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    register()
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
        info = NCCLTrainerInitInfo(spec.master_address, free_port(), spec.world_size, rank=0)
    else:
        from rlkit.rollout.gloo_transfer import GlooTrainerInitInfo
        info = GlooTrainerInitInfo(master_address=spec.master_address, master_port=spec.master_port,
                                   prefix=spec.prefix, world_size=spec.world_size, timeout_s=spec.timeout_s, rank=0)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)


def send(backend: str, senders: list, source, version: str) -> dict:
    """One weight update of every sender's server to ``version``; returns ``{sender: error}`` for the failures."""
    if backend != "nccl":
        from rlkit.rollout.gloo_transfer import send_to_all
        return send_to_all(senders, source, version)
    failed = {}
    for sender in senders:
        try:
            sender.send_weights()
            sender.client.call("POST", "/update_weight_version", json={"new_version": version})
        except Exception as exc:   # noqa: BLE001 -- reported per server by the caller
            failed[sender] = exc
    return failed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
