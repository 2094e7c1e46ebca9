"""vLLM worker extension (``worker_extension_cls``) used by ``rlkit rollout-server``.

vLLM mixes this class into each of its model workers (one per tensor-parallel rank). ``collective_rpc`` then
runs these methods inside every worker process, so each TP rank joins the trainer's weight group itself
(group rank 1 + tp_rank), receives the full buckets, and feeds them to the worker's own ``reload_weights``
(``is_checkpoint_format=True``: the model's ``load_weights`` rebuilds fused parameters and takes this rank's
shard). Nothing in the trainer depends on vLLM's internal parameter layout.
"""

from __future__ import annotations

import time

import torch

from rlkit.rollout.protocol import open_group, receive_buckets


class WeightReceiver:
    """Methods called through ``LLM.collective_rpc`` on every vLLM worker (``self`` is the vLLM worker)."""

    def rlkit_join(self, addr: str, port: int, prefix: str, world: int, backend: str, timeout_s: float) -> int:
        rank = 1 + int(getattr(self, "rank", 0))
        self._rlkit_group = open_group(addr, port, prefix, rank, world, backend, timeout_s)
        self._rlkit_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        return rank

    def rlkit_receive(self, manifests: list) -> float:
        t0 = time.perf_counter()
        self.reload_weights(weights_iterator=receive_buckets(self._rlkit_group, manifests, self._rlkit_device),
                            is_checkpoint_format=True)
        return time.perf_counter() - t0
