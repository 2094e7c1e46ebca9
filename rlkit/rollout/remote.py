"""``rollout.engine: vllm_server`` -- the trainer's side of disaggregated rollout workers (``rlkit rollout-server``).

Start the workers first (on this node or others), then point the recipe at them::

    rlkit rollout-server --model Qwen/Qwen2.5-0.5B-Instruct --workers 2 --port 51300      # -> :51300, :51301
    rollout: {engine: {name: vllm_server, addresses: ["10.0.0.5:51300", "10.0.0.5:51301"]}}

What happens (protocol: :mod:`rlkit.rollout.protocol`):

* **Connect.** Every trainer rank connects to every worker (retrying for ``connect_timeout_s`` while the workers
  start), then rank 0 pushes its weights to all of them, so the workers' ``--model`` only has to have the right
  architecture, and a worker left over from another run can never serve stale weights.
* **Generate.** Each rank sends its own requests. Load balancing is dynamic: the requests are cut into
  ``chunks_per_worker`` chunks per worker; every worker starts with ``chunks_per_worker - 1`` chunks and gets
  the next one whenever its in-flight count drops below that, so a fast worker takes more. Completions stream
  back as they finish. A completion's randomness depends only on its seed, so the result does not depend on
  which worker served it or on the number of workers.
* **Sync** (after every optimizer phase): all ranks meet at a barrier; rank 0 sends the state dict in buckets of
  ``sync_bucket_mb`` (one broadcast per bucket, to all workers at once) over a per-worker torch.distributed group
  (gloo on CPU, NCCL on GPU); both sides bump the weight version; another barrier. A sync waits until the
  workers' in-flight requests have finished.
* **Failures.** A worker whose connection drops or that stays silent for ``worker_timeout_s`` (workers send a
  heartbeat every 2 s while busy) is dropped with a warning; its unfinished requests go to the remaining
  workers, so the step still completes with identical results. A dropped worker is retried at every sync
  (at most every ``reconnect_every_s``): a restarted worker rejoins and receives the current weights before it
  gets any request. When no worker is left, or none is reachable at start, the run stops with
  :class:`RolloutWorkerError` naming every address and what happened to it.

The canary (``rollout.canary_every``) probes every worker separately; the reported ``rollout/canary_diff`` is the
worst worker's.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge, wait
from typing import Any

import torch

from rlkit.registry import ENGINES
from rlkit.rollout import Completion, RolloutEngine, SamplingParams
from rlkit.rollout.protocol import (PROTOCOL_VERSION, RolloutWorkerError, authkey, broadcast, bucket_manifest, drain,
                                    gather_buckets, host_store, iter_buckets, local_address, open_group, pack_bucket,
                                    parse_address, sync_sources)

log = logging.getLogger("rlkit.remote")


@dataclass
class _Worker:
    address: str
    conn: Connection | None = None
    info: dict[str, Any] = field(default_factory=dict)
    group: Any = None                       # weight group (rank 0 only)
    inflight: set[int] = field(default_factory=set)
    last_seen: float = 0.0
    error: str = "never connected"
    retry_at: float = 0.0

    def describe(self) -> str:
        return f"{self.address} ({'up' if self.conn else self.error})"


@ENGINES.register("vllm_server")
class VLLMServerEngine(RolloutEngine):
    """Client of K rollout workers: dynamic balancing, streamed completions, bucketed versioned weight sync."""

    owns_weights = True
    releases_memory = False

    def __init__(self, model, tokenizer, addresses: list[str] | str, accelerator=None, model_path: str | None = None,
                 max_len: int = 256, seed: int = 0, connect_timeout_s: float = 600.0, worker_timeout_s: float = 120.0,
                 sync_timeout_s: float = 300.0, sync_bucket_mb: float = 256.0, sync_backend: str = "auto",
                 chunks_per_worker: int = 4, reconnect_every_s: float = 10.0, trainer_address: str | None = None):
        if isinstance(addresses, str):
            addresses = [a for a in addresses.split(",") if a.strip()]
        if not addresses:
            raise ValueError("rollout.engine.addresses is empty: list the host:port of every rollout worker "
                             "(`rlkit rollout-server` prints them)")
        for a in addresses:
            parse_address(a)
        if sync_backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"rollout.engine.sync_backend must be auto, gloo or nccl, got '{sync_backend}'")
        if chunks_per_worker < 1 or sync_bucket_mb <= 0:
            raise ValueError("rollout.engine.chunks_per_worker must be >= 1 and sync_bucket_mb > 0, got "
                             f"{chunks_per_worker} and {sync_bucket_mb}")
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.workers = [_Worker(a.strip()) for a in addresses]
        self.worker_timeout_s, self.sync_timeout_s = worker_timeout_s, sync_timeout_s
        self.bucket_bytes, self.sync_backend = int(sync_bucket_mb * 2**20), sync_backend
        self.chunks_per_worker, self.reconnect_every_s = chunks_per_worker, reconnect_every_s
        self.trainer_address, self.model_path = trainer_address, model_path
        self.version, self.requeued, self._call, self._group_gen = 0, 0, 0, 0
        self._store = None
        self.run_id = self._shared(uuid.uuid4().hex if self.rank == 0 else None)
        self._connect_all(connect_timeout_s)
        if self.rank == 0:                       # the workers' --model may be anything of the same architecture
            self._push(model)
        else:
            drain(model, self.bucket_bytes)      # a sharded policy: join rank 0's per-bucket gathers
        self._barrier()
        if self.rank != 0:
            self._follow()
        self.precision = _dtype(self.workers)
        self.last_sync: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ collectives
    def _barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def _shared(self, obj: Any) -> Any:
        """rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list
        return broadcast_object_list([obj], from_process=0)[0]

    # ------------------------------------------------------------------------------------------ connections
    def _connect_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for w in self.workers:
                if w.conn is None:
                    self._connect(w)
            if all(w.conn is not None for w in self.workers) or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if not any(w.conn is not None for w in self.workers):
            raise RolloutWorkerError(
                f"no rollout worker reachable after {timeout_s:g} s: {'; '.join(w.describe() for w in self.workers)}. "
                f"Start them first, e.g. `rlkit rollout-server --model {self.model_path or 'MODEL'} --workers "
                f"{len(self.workers)} --port {parse_address(self.workers[0].address)[1]}`, or raise "
                "rollout.engine.connect_timeout_s if they are still loading.")
        for w in self.workers:
            if w.conn is None:
                log.warning("rollout worker %s is not reachable (%s); continuing with the others, it is retried at "
                            "every weight sync", w.address, w.error)

    def _connect(self, w: _Worker) -> bool:
        """One connection attempt (handshake + hello); False with ``w.error`` set when the worker is not there."""
        host, port = parse_address(w.address)
        try:
            sock = socket.create_connection((host, port), timeout=10.0)
        except OSError as exc:
            w.error = f"unreachable: {exc.strerror or exc}"
            return False
        sock.settimeout(None)                   # Connection needs a blocking descriptor
        conn = Connection(sock.detach())
        try:
            answer_challenge(conn, authkey(host))
            deliver_challenge(conn, authkey(host))
            conn.send({"op": "hello", "protocol": PROTOCOL_VERSION})
            if not conn.poll(30.0):
                raise RolloutWorkerError("no answer to hello within 30 s")
            reply = conn.recv()
        except AuthenticationError as exc:
            conn.close()
            raise RolloutWorkerError(f"rollout worker {w.address} rejected the authentication key: set "
                                     "RLKIT_ROLLOUT_AUTHKEY to the same value for the trainer and "
                                     "`rlkit rollout-server`") from exc
        except (OSError, EOFError, RolloutWorkerError) as exc:
            conn.close()
            w.error = f"handshake failed: {exc}"
            return False
        if reply.get("op") == "error":
            conn.close()
            raise RolloutWorkerError(f"rollout worker {w.address}: {reply['message']}")
        w.conn, w.info, w.error, w.last_seen = conn, reply, "", time.monotonic()
        _check_overlap(w, self.rank)
        log.info("connected to rollout worker %s (pid %s on %s, weights v%s)", w.address, reply.get("pid"),
                 reply.get("host"), reply.get("version"))
        return True

    def _lost(self, w: _Worker, reason: str, pending: deque | None = None) -> None:
        if w.conn is not None:
            reason = _last_words(w.conn) or reason
            w.conn.close()
        w.conn, w.group, w.error, w.retry_at = None, None, reason, time.monotonic() + self.reconnect_every_s
        lost = sorted(w.inflight)
        w.inflight = set()
        if pending is not None and lost:
            pending.extendleft(reversed(lost))
            self.requeued += len(lost)
        left = sum(x.conn is not None for x in self.workers)
        log.warning("rollout worker %s lost: %s; %d request(s) re-sent, %d worker(s) left", w.address, reason,
                    len(lost), left)

    def _revive(self) -> list[_Worker]:
        """Retry dropped workers whose back-off has passed (called at weight syncs, when weights are consistent)."""
        now, back = time.monotonic(), []
        for w in self.workers:
            if w.conn is None and now >= w.retry_at:
                if self._connect(w):
                    log.info("rollout worker %s is back", w.address)
                    back.append(w)
                else:
                    w.retry_at = now + self.reconnect_every_s
        return back

    def _follow(self) -> None:
        """Ranks > 0 after rank 0's push: the workers it reached hold this version (they refuse requests for any
        other version, so a worker rank 0 did not reach cannot serve stale weights); reconnect dropped ones."""
        for w in self._alive():
            w.info.update(version=self.version, run_id=self.run_id)
        for w in self._revive():
            self._check_current(w)

    def _check_current(self, w: _Worker) -> None:
        """Non-zero ranks: a worker is usable only once rank 0 has given it the current weights."""
        if (w.info.get("version"), w.info.get("run_id")) != (self.version, self.run_id):
            self._lost(w, f"holds weights v{w.info.get('version')}, not v{self.version} of this run yet")

    def _alive(self) -> list[_Worker]:
        return [w for w in self.workers if w.conn is not None]

    def _none_left(self) -> RolloutWorkerError:
        return RolloutWorkerError(
            "every rollout worker is gone: " + "; ".join(w.describe() for w in self.workers)
            + ". Restart `rlkit rollout-server` and run the same training command again: it resumes from the last "
              "checkpoint (train.resume=auto).")

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Completion]:
        n = len(prompt_ids)
        if n == 0:
            return []
        self._call += 1
        call = self._call
        results: list[Completion | None] = [None] * n
        pending: deque[int] = deque(range(n))
        live = self._alive()
        if not live:
            raise self._none_left()
        chunk = max(1, math.ceil(n / (len(live) * self.chunks_per_worker)))
        keep = chunk * max(1, self.chunks_per_worker - 1)          # in-flight target per worker
        for w in live:
            w.inflight, w.last_seen = set(), time.monotonic()
        done = 0
        while done < n:
            for w in self._alive():
                while pending and len(w.inflight) < keep and w.conn is not None:
                    take = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    w.inflight.update(take)
                    try:
                        w.conn.send({"op": "generate", "call": call, "run_id": self.run_id, "version": self.version,
                                     "params": params, "items": [(i, prompt_ids[i], seeds[i]) for i in take]})
                    except OSError as exc:
                        self._lost(w, f"send failed: {exc}", pending)
            busy = [w for w in self._alive() if w.inflight]
            if not busy:
                raise self._none_left()
            for conn in wait([w.conn for w in busy], timeout=1.0):
                w = next(x for x in busy if x.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._lost(w, "connection closed (worker died?)", pending)
                    continue
                w.last_seen = time.monotonic()
                if msg["op"] == "completions" and msg["call"] == call:
                    for index, completion in msg["items"]:
                        if index in w.inflight:
                            w.inflight.discard(index)
                            results[index] = completion
                            done += 1
                elif msg["op"] == "error":
                    if msg.get("kind") in ("version", "engine"):
                        self._lost(w, msg["message"].strip().splitlines()[-1], pending)
                    else:
                        raise RolloutWorkerError(f"rollout worker {w.address} failed a request: {msg['message']}")
            now = time.monotonic()
            for w in busy:
                if w.conn is not None and now - w.last_seen > self.worker_timeout_s:
                    self._lost(w, f"silent for {now - w.last_seen:.0f} s with requests in flight (hung?)", pending)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------ weights
    def sync_weights(self, model) -> dict[str, float]:
        self._barrier()                          # every rank's rollouts are done before the weights change
        self.version += 1
        if self.rank == 0:
            out = self._push(model)
        else:                                    # a sharded policy: join rank 0's per-bucket gathers
            out = {}
            drain(model, self.bucket_bytes)
        self._barrier()
        if self.rank != 0:
            self._follow()
        out.update(weight_version=float(self.version), workers_alive=float(len(self._alive())),
                   requeued=float(self.requeued))
        self.last_sync = out
        return dict(out)

    def _push(self, model) -> dict[str, float]:
        """rank 0: send the state dict to every reachable worker, one broadcast per bucket.

        A sharded policy is gathered one bucket at a time (the manifests come from the full shapes first), with the
        other ranks joining each gather through ``drain``; so every bucket is gathered even when no worker is
        left, and only after the loop does a lost-everything error stop the run."""
        t0 = time.perf_counter()
        self._revive()
        buckets = list(iter_buckets(sync_sources(model), self.bucket_bytes))          # planned, nothing gathered
        manifests = [bucket_manifest(b) for b in buckets]
        backend = self._backend(model)
        device = next(model.parameters()).device if backend == "nccl" else torch.device("cpu")
        for w in self._alive():
            self._join(w, backend)
        targets = self._alive()
        for w in targets:
            try:
                w.conn.send({"op": "sync", "run_id": self.run_id, "version": self.version, "manifest": manifests})
            except OSError as exc:
                self._lost(w, f"send failed: {exc}")
        total = 0
        for bucket in gather_buckets(buckets):
            flat = pack_bucket(bucket, device)                                          # [bucket bytes] uint8
            total += flat.numel()
            works = []
            for w in [w for w in targets if w.conn is not None]:
                try:
                    works.append((w, broadcast(w.group, flat)))
                except RuntimeError as exc:
                    self._lost(w, f"weight transfer failed: {exc}")
            for w, work in works:
                try:
                    work.wait()
                except RuntimeError as exc:
                    self._lost(w, f"weight transfer failed: {exc}")
        for w in [w for w in targets if w.conn is not None]:
            reply = self._expect(w, "synced", self.sync_timeout_s)
            if reply is not None:
                w.info.update(version=reply["version"], run_id=self.run_id)
        if not self._alive():
            raise self._none_left()
        seconds = time.perf_counter() - t0
        return {"sync_s": seconds, "sync_gb": total / 1e9, "sync_gb_per_s": total / 1e9 / max(seconds, 1e-9),
                "sync_buckets": float(len(buckets))}

    def _backend(self, model) -> str:
        if self.sync_backend != "auto":
            return self.sync_backend
        on_gpu = next(model.parameters()).is_cuda
        return "nccl" if on_gpu and all(w.info.get("info", {}).get("cuda") for w in self._alive()) else "gloo"

    def _join(self, w: _Worker, backend: str) -> None:
        """Create the weight group of rank 0 and worker ``w``'s TP ranks (once per connection)."""
        if w.group is not None:
            return
        if self._store is None:
            self._store = host_store(self.sync_timeout_s)
        self._group_gen += 1
        prefix = f"rlkit/{self.run_id}/{self._group_gen}"
        world = 1 + int(w.info.get("info", {}).get("tp", 1))
        addr = self.trainer_address or local_address(w.conn)
        try:
            w.conn.send({"op": "join", "addr": addr, "port": self._store.port, "prefix": prefix, "backend": backend,
                         "timeout_s": self.sync_timeout_s})
            w.group = open_group("127.0.0.1", self._store.port, prefix, 0, world, backend, self.sync_timeout_s)
        except (OSError, RuntimeError) as exc:
            self._lost(w, f"could not form the weight group: {exc}")
            return
        self._expect(w, "joined", self.sync_timeout_s)

    def _expect(self, w: _Worker, op: str, timeout_s: float) -> dict | None:
        """The worker's next ``op`` reply (heartbeats and late completions skipped); None if it was lost."""
        deadline = time.monotonic() + timeout_s
        while w.conn is not None:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not w.conn.poll(left):
                    self._lost(w, f"no '{op}' reply within {timeout_s:g} s")
                    return None
                msg = w.conn.recv()
            except (EOFError, OSError):
                self._lost(w, f"connection closed while waiting for '{op}'")
                return None
            if msg["op"] == op:
                return msg
            if msg["op"] == "error":
                if msg.get("kind") in ("engine", "sync", "join"):
                    self._lost(w, msg["message"].strip().splitlines()[-1])
                    return None
                raise RolloutWorkerError(f"rollout worker {w.address}: {msg['message']}")
        return None

    # ------------------------------------------------------------------------------------------ canary
    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float] | None:
        probes = self.probe_all(prompt_ids, response_ids)
        return next(iter(probes.values())) if probes else None

    def probe_all(self, prompt_ids: list[int], response_ids: list[int]) -> dict[str, list[float]]:
        """Every live worker's log-probs of the probe (asked by rank 0, shared with all ranks)."""
        out: dict[str, list[float]] = {}
        if self.rank == 0:
            for w in self._alive():
                try:
                    w.conn.send({"op": "probe", "prompt_ids": list(prompt_ids), "response_ids": list(response_ids)})
                except OSError as exc:
                    self._lost(w, f"send failed: {exc}")
                    continue
                reply = self._expect(w, "probe", self.sync_timeout_s)
                if reply is not None:
                    out[f"worker {w.address}"] = reply["logprobs"]
            if not out:
                raise self._none_left()
        return self._shared(out)

    def close(self) -> None:
        for w in self._alive():
            try:
                w.conn.send({"op": "bye"})
            except OSError:
                pass
            w.conn.close()
            w.conn = None
            w.error = "closed"


def _last_words(conn: Connection) -> str | None:
    """The error a dying worker sent before its connection broke, if it is still unread."""
    try:
        while conn.poll(0):
            msg = conn.recv()
            if msg.get("op") == "error":
                return msg["message"].strip().splitlines()[-1]
    except (EOFError, OSError):
        pass
    return None


def _dtype(workers: list[_Worker]) -> torch.dtype | None:
    names = {w.info.get("info", {}).get("dtype") for w in workers if w.conn is not None}
    names.discard(None)
    return getattr(torch, names.pop(), None) if len(names) == 1 else None


def _check_overlap(w: _Worker, rank: int) -> None:
    """Refuse a worker that runs on this trainer process's own GPU (a launch mistake that would OOM or crawl)."""
    if not torch.cuda.is_available() or w.info.get("host") != socket.gethostname():
        return
    mine = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    if mine in w.info.get("info", {}).get("devices", []):
        raise RolloutWorkerError(
            f"trainer rank {rank} and rollout worker {w.address} share GPU {mine}: give the rollout server other "
            "GPUs (`rlkit rollout-server --devices ...`) than the trainer (CUDA_VISIBLE_DEVICES for accelerate launch)")
