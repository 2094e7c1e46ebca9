"""``rollout.engine: vllm_server`` -- rollouts from stock ``vllm serve`` processes, weights through vLLM's native
weight-transfer protocol.

Start the servers (``rlkit rollout-server`` starts and supervises them, or prints the command lines with
``--print-only`` for you to run), then point the recipe at them::

    rollout: {engine: {name: vllm_server, addresses: ["127.0.0.1:8000", "127.0.0.1:8001"]}}

What a server needs: ``VLLM_SERVER_DEV_MODE=1`` (vLLM's RL routes), ``--enable-scale-out`` (token-in/token-out
generation with per-token weight versions), ``--logprobs-mode processed_logprobs`` (sampling log-probs the trainer
can compare with its own), and ``--weight-transfer-config '{"backend": "rlkit_gloo"}'`` (CPU, or any machine;
installing rlkit registers the backend with vLLM) or ``'{"backend": "nccl"}'`` (GPU servers reachable by NCCL from
the trainer's rank 0; ``rollout.engine.sync_backend: nccl``).

* **Connect.** Every trainer rank waits for every server's ``/health`` (up to ``connect_timeout_s``); rank 0 joins
  each server's weight group and pushes its weights, so the servers' ``--model`` only fixes the architecture and
  a server left over from another run can never serve stale weights.
* **Generate.** Each rank sends its own requests through the fleet (:mod:`rlkit.rollout.fleet`: balanced,
  streamed, failover). Every completion carries the weight versions that sampled its tokens; one sampled by any
  version but the current one (a server that missed a sync) is refused and re-sent elsewhere.
* **Sync** (after every optimizer phase): rank 0 pauses every server (``mode=keep``), sends the buckets once to
  all of them (:func:`rlkit.rollout.gloo_transfer.send_to_all`), finishes the update with the version string
  ``<run id>:<version>`` and resumes; a dropped server is retried first and, if it answers, rejoins with a new
  weight group and gets the current weights before any request. The canary then probes every server.
* **Router.** With ``router: host:port`` generation goes through a router in front of the servers (vllm-router,
  llm-d); the weight sync and the canary still go to every address in ``addresses``, which must list each server
  behind it.
* **LoRA.** With ``model.lora`` the servers get the base weights once per connection and the adapter at every
  sync through vLLM's runtime adapter loading (:mod:`rlkit.rollout.server_lora`), where they allow it; otherwise
  (``sync: auto``) merged weights at every sync.
* **Security.** vLLM's RL routes are unauthenticated; addresses that are not loopback are refused unless
  ``allow_remote: true`` (see the README: what an exposed route allows and how to firewall it).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import torch

from rlkit.registry import ENGINES
from rlkit.rollout import Completion, RolloutEngine, SamplingParams
from rlkit.rollout.fleet import Server, ServerFleet
from rlkit.rollout.http_client import Generated, ServerError, check_addresses, parse_address, reachable_from
from rlkit.rollout.weights import drain, host_store

log = logging.getLogger("rlkit.server_engine")


@ENGINES.register("vllm_server")
class VLLMServerEngine(RolloutEngine):
    """Client of K stock vLLM servers: balanced streamed generation, versioned native weight transfer, canary."""

    owns_weights = True
    releases_memory = False
    syncs_while_generating = True     # pause(mode="keep") -> update -> resume; tokens carry their version

    def __init__(self, model, tokenizer, addresses: list[str] | str, accelerator=None, model_path: str | None = None,
                 max_len: int = 256, seed: int = 0, connect_timeout_s: float = 600.0, request_timeout_s: float = 600.0,
                 health_every_s: float = 15.0, health_timeout_s: float = 10.0, sync_timeout_s: float = 300.0,
                 sync_bucket_mb: float = 256.0, sync_backend: str = "rlkit_gloo", max_inflight: int = 64,
                 reconnect_every_s: float = 10.0, trainer_address: str | None = None, allow_remote: bool = False,
                 router: str | None = None, lora=None, adapter_dir: str | None = None):
        addresses = check_addresses(addresses, allow_remote)
        if router is not None:
            check_addresses([router], allow_remote)
        if sync_backend not in ("rlkit_gloo", "nccl"):
            raise ValueError(f"rollout.engine.sync_backend must be rlkit_gloo or nccl, got '{sync_backend}'")
        if sync_bucket_mb <= 0:
            raise ValueError(f"rollout.engine.sync_bucket_mb must be > 0, got {sync_bucket_mb}")
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.fleet = ServerFleet(addresses, max_inflight=max_inflight, request_timeout_s=request_timeout_s,
                                 control_timeout_s=sync_timeout_s, health_every_s=health_every_s,
                                 health_timeout_s=health_timeout_s, reconnect_every_s=reconnect_every_s)
        self.router = ServerFleet([router], max_inflight=max_inflight * len(addresses), router=True,
                                  request_timeout_s=request_timeout_s, health_every_s=health_every_s,
                                  health_timeout_s=health_timeout_s) if router else None
        self.bucket_bytes, self.sync_backend, self.sync_timeout_s = int(sync_bucket_mb * 2**20), sync_backend, \
            sync_timeout_s
        self.trainer_address = trainer_address
        self.version, self._groups, self._store = 0, 0, None
        self.run_id = self._shared(uuid.uuid4().hex[:12] if self.rank == 0 else None)
        self.fleet.connect_all(connect_timeout_s)
        if self.router is not None:
            self.router.connect_all(connect_timeout_s)
        self.adapters = None                         # set before the check, which may close the engine
        self.adapters = self._adapters(model, lora, adapter_dir)
        self.last_sync: dict[str, float] = {}
        self.last_sync = self.sync_weights(model, bump=False)
        self.precision = _dtype(self.fleet.alive())

    def _adapters(self, model, lora, adapter_dir: str | None):
        """Adapter sync where every server allows runtime LoRA loading; None = full (merged) weights."""
        from rlkit.lora import use_adapter_sync
        from rlkit.rollout.server_lora import ServerAdapters, explain
        if lora is None or not use_adapter_sync(lora):
            return None
        adapters = ServerAdapters(lora, self.run_id, adapter_dir if self.rank == 0 else None)
        if self.rank == 0:
            adapters.save(model, 0)                  # version 0, loaded by the first sync: here it is the probe
        refused = self._shared({s.address: why for s in self.fleet.alive() if (why := adapters.refusal(s.client))}
                               if self.rank == 0 else None)
        if refused:
            adapters.close()
            address, why = next(iter(refused.items()))
            if adapters.required:
                self.close()
                raise ValueError(explain(address, why))
            log.warning("model.lora.sync=auto -> merged weights at every sync: server %s cannot load adapters "
                        "(%s)", address, why)
            return None
        for client in [s.client for s in self.fleet.servers] + ([self.router.servers[0].client] if self.router
                                                                 else []):
            client.adapter = adapters.name           # every rank's requests use the adapter
        return adapters

    @property
    def current(self) -> str:
        """The weight version string servers must hold: ``<run id>:<version>``."""
        return f"{self.run_id}:{self.version}"

    # ------------------------------------------------------------------------------------------ collectives
    def _barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def _shared(self, obj):
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list
        return broadcast_object_list([obj], from_process=0)[0]

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Completion]:
        if not prompt_ids:
            return []
        floor = self.version                 # tokens sampled before this call started are never accepted
        fleet = self.router or self.fleet
        if self.router is not None:          # the router holds the current weights when a server behind it does
            self.router.servers[0].holds = self.current
        got = fleet.generate(prompt_ids, seeds, params, lambda: self.current,
                             lambda g: self._versions(g, floor))
        return [g.completion for g in got]

    def _versions(self, g: Generated, floor: int) -> str | None:
        """Accept a completion whose every token was sampled by a version of this run in [floor, current] (more than
        one when a weight update happened mid-request: a partial rollout), recording them per token; else why not."""
        per_token = [-1] * len(g.completion.token_ids)
        for span in g.spans:
            run, _, number = span.version.rpartition(":")
            if run != self.run_id or not number.isdigit() or not floor <= int(number) <= self.version:
                return (f"sampled by weight version {span.version}, not one of {self.run_id}:{floor}.."
                        f"{self.version} (missed a sync?)")
            per_token[span.start:span.end] = [int(number)] * (span.end - span.start)
        if -1 in per_token:
            return "the server did not report the weight version of every token (needs vLLM >= 0.32)"
        g.completion.token_versions = per_token
        return None

    @property
    def requeued(self) -> int:
        return self.fleet.requeued + (self.router.requeued if self.router is not None else 0)

    # ------------------------------------------------------------------------------------------ weights
    def sync_weights(self, model, bump: bool = True) -> dict[str, float]:
        """Every rank: the servers hold the policy's weights as version ``self.version`` (+1 when ``bump``)."""
        self._barrier()                          # every rank's rollouts are done before the weights change
        if bump:
            self.version += 1
        out = self._push(model) if self.rank == 0 else drain(model, self.bucket_bytes) or {}
        holders = self._shared({s.address: s.holds for s in self.fleet.servers} if self.rank == 0 else None)
        for s in self.fleet.servers:             # ranks > 0 use exactly the servers rank 0 updated
            if holders.get(s.address) == self.current:
                s.alive, s.holds = True, self.current
            else:
                self.fleet.drop(s, s.error if not s.alive else "missed the weight sync")
        if not self.fleet.usable(self.current):
            raise self.fleet.none_left()
        if self.router is not None:
            self.router.revive()
        out.update(weight_version=float(self.version), servers_alive=float(len(self.fleet.alive())),
                   requeued=float(self.requeued))
        self.last_sync = out
        return dict(out)

    def _push(self, model) -> dict[str, float]:
        from rlkit.rollout.gloo_transfer import BucketSource
        from rlkit.rollout.transfer import send
        t0 = time.perf_counter()
        self.fleet.revive()
        source = BucketSource(model, self.bucket_bytes)
        fresh = {s.address for s in self.fleet.alive() if s.sender is None}     # new connections: full weights
        targets = [s for s in self.fleet.alive() if self._join(s, source)]
        for s in list(targets):
            try:
                s.client.pause()
            except ServerError as exc:
                self.fleet.drop(s, f"pause failed: {exc}")
                targets.remove(s)
        full = targets if self.adapters is None else [s for s in targets if s.address in fresh]
        with self.adapters.base_weights(model) if self.adapters is not None else contextlib.nullcontext():
            plan = source.plan() if full else []
            failed = send(self.sync_backend, [s.sender for s in full], source, self.current) if full else {}
        total = sum(t.numel() * t.element_size() for b in plan for _, t in b)
        total += self.adapters.save(model, self.version) if self.adapters is not None else 0
        for s in targets:
            if s.sender in failed:
                self.fleet.drop(s, f"weight transfer failed: {failed[s.sender]}")
                continue
            try:
                if self.adapters is not None:
                    self.adapters.load(s.client, self.current)
                s.client.resume()
                s.holds = self.current
            except ServerError as exc:
                self.fleet.drop(s, f"adapter load or resume failed: {exc}")
        if self.adapters is not None:
            self.adapters.forget_old()
        seconds = time.perf_counter() - t0
        return {"sync_s": seconds, "sync_gb": total / 1e9, "sync_gb_per_s": total / 1e9 / max(seconds, 1e-9),
                "sync_buckets": float(len(plan))}

    def _join(self, s: Server, source) -> bool:
        """Rank 0: open ``s``'s weight group once per connection (a new group after a restart)."""
        if s.sender is not None:
            return True
        from rlkit.rollout.transfer import GroupSpec, open_sender
        if self._store is None and self.sync_backend == "rlkit_gloo":
            self._store = host_store(self.sync_timeout_s)
        self._groups += 1
        try:
            spec = GroupSpec(self.trainer_address or reachable_from(parse_address(s.address)[0]),
                             self._store.port if self._store is not None else 0,
                             f"rlkit/{self.run_id}/{self._groups}", 1 + s.client.world_size(), self.sync_timeout_s)
            s.sender = open_sender(self.sync_backend, s.client, source, spec)
        except (ServerError, RuntimeError, ValueError) as exc:
            self.fleet.drop(s, f"could not form the weight group: {exc}")
            return False
        return True

    # ------------------------------------------------------------------------------------------ canary
    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float] | None:
        probes = self.probe_all(prompt_ids, response_ids)
        return next(iter(probes.values())) if probes else None

    def probe_all(self, prompt_ids: list[int], response_ids: list[int]) -> dict[str, list[float]]:
        """Every server's log-probs of the probe (asked by rank 0, shared with all ranks)."""
        out: dict[str, list[float]] = {}
        if self.rank == 0:
            for s in self.fleet.usable(self.current):
                try:
                    out[f"server {s.address}"] = s.client.probe(prompt_ids, response_ids)
                except ServerError as exc:
                    self.fleet.drop(s, f"probe failed: {exc}")
            if not out:
                raise self.fleet.none_left()
        return self._shared(out)

    def close(self) -> None:
        if self.adapters is not None:
            self.adapters.close()
        self.fleet.close()
        if self.router is not None:
            self.router.close()


def _dtype(servers: list[Server]) -> torch.dtype | None:
    names = set()
    for s in servers:
        try:
            names.add(s.client.dtype())
        except ServerError:
            pass
    names.discard(None)
    return getattr(torch, names.pop(), None) if len(names) == 1 else None
