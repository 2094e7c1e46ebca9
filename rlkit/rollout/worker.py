"""One rollout worker: a vLLM engine behind the control protocol of :mod:`rlkit.rollout.protocol`.

``rlkit rollout-server`` starts K of these (``python -m rlkit.rollout.worker ...``), one per device set. A worker
serves any number of trainer connections (one per trainer rank) from a single loop:

    accept (thread) -> read ready messages -> one engine step -> send finished completions -> heartbeat

Requests of all connections share the engine's continuous batch; each finished request goes straight back to the
connection that sent it. ``sync`` and ``probe`` first let in-flight requests finish (weights never change inside
a completion). A connection that drops has its requests aborted. An engine exception is reported to every client
and ends the process with exit code 3 (the supervisor restarts it when ``--restart`` is on).

The port only opens once the engine is ready, so "connection refused" means "not up yet" to the trainer.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import queue
import sys
import threading
import time
import traceback
from multiprocessing.connection import AuthenticationError, Connection, Listener, wait
from typing import Any

import torch

from rlkit.rollout import Completion, SamplingParams
from rlkit.rollout.protocol import HEARTBEAT_S, PROTOCOL_VERSION, authkey

log = logging.getLogger("rlkit.worker")


class VLLMBackend:
    """The engine behind a worker: ``vllm.LLM`` driven request by request through ``LLMEngine.step()``."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int | None = None,
                 kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.9, seed: int = 0,
                 enforce_eager: bool | None = None):
        from rlkit.rollout.vllm_engine import _import_vllm, llm_kwargs

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # the engine core lives in this process
        vllm = _import_vllm()
        self.cuda = torch.cuda.is_available()
        self.dtype = checkpoint_dtype(model) if dtype == "auto" else dtype
        self.llm = vllm.LLM(**llm_kwargs(model, dtype=self.dtype, seed=seed, max_model_len=max_model_len,
                                         enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                                         kv_cache_gib=kv_cache_gib, tensor_parallel_size=tensor_parallel_size,
                                         worker_extension_cls="rlkit.rollout.vllm_ext.WeightReceiver"))
        self.engine = self.llm.llm_engine
        self.tp = tensor_parallel_size
        self.model = model

    def info(self) -> dict[str, Any]:
        devices = []
        if self.cuda:
            devices = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
        return {"model": self.model, "dtype": self.dtype, "tp": self.tp, "cuda": self.cuda, "devices": devices,
                "max_model_len": self.engine.model_config.max_model_len}

    def add(self, request_id: str, prompt_ids: list[int], seed: int, params: SamplingParams) -> None:
        from rlkit.rollout.vllm_engine import _import_vllm, vllm_sampling_params
        self.engine.add_request(request_id, {"prompt_token_ids": list(prompt_ids)},
                                vllm_sampling_params(_import_vllm(), params, seed))

    def step(self) -> list[tuple[str, Completion]]:
        from rlkit.rollout.vllm_engine import to_completion
        return [(o.request_id, to_completion(o.outputs[0])) for o in self.engine.step() if o.finished]

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def abort(self, request_ids: list[str]) -> None:
        self.engine.abort_request(list(request_ids))

    def join(self, addr: str, port: int, prefix: str, world: int, backend: str, timeout_s: float) -> None:
        self.llm.collective_rpc("rlkit_join", args=(addr, port, prefix, world, backend, timeout_s))

    def receive(self, manifests: list) -> None:
        self.llm.collective_rpc("rlkit_receive", args=(manifests,))
        self.llm.reset_prefix_cache()

    def probe(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        from rlkit.rollout.vllm_engine import probe_logprobs
        return probe_logprobs(self.llm, prompt_ids, response_ids)


def checkpoint_dtype(model: str) -> str:
    """The dtype a checkpoint was saved in (vLLM's own "auto" would run float32 checkpoints in half precision,
    which the trainer's canary would then flag)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(model)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


class WorkerServer:
    """The worker's event loop (single-threaded over the engine; a helper thread only accepts connections)."""

    def __init__(self, backend, host: str, port: int, *, index: int = 0, key: bytes | None = None):
        self.backend, self.index = backend, index
        self.listener = Listener((host, port), authkey=key if key is not None else authkey(host))
        self.address = f"{host}:{self.listener.address[1]}"
        self.clients: dict[int, Connection] = {}
        self.requests: dict[str, tuple[int, int, int]] = {}        # request id -> (client, call, index)
        self.version, self.run_id = 0, None
        self.stopped = False
        self._next_beat = time.monotonic() + HEARTBEAT_S
        self._incoming: queue.Queue[Connection] = queue.Queue()
        self._next_client = 0
        threading.Thread(target=self._accept_loop, name="rlkit-worker-accept", daemon=True).start()

    # ---------------------------------------------------------------------------------------- connections
    def _accept_loop(self) -> None:
        while not self.stopped:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, AuthenticationError):
                if self.stopped:
                    return
                log.warning("worker %d: a connection failed to authenticate or dropped during the handshake "
                            "(check RLKIT_ROLLOUT_AUTHKEY)", self.index)
                continue
            self._incoming.put(conn)

    def _adopt(self) -> None:
        while not self._incoming.empty():
            self.clients[self._next_client] = self._incoming.get()
            self._next_client += 1

    def _drop(self, client: int) -> None:
        conn = self.clients.pop(client, None)
        if conn is not None:
            conn.close()
        mine = [rid for rid, (c, _, _) in self.requests.items() if c == client]
        if mine:
            self.backend.abort(mine)
            for rid in mine:
                del self.requests[rid]
            log.warning("worker %d: client %d left with %d requests in flight; aborted them", self.index, client,
                        len(mine))

    def _send(self, client: int, msg: dict) -> None:
        conn = self.clients.get(client)
        if conn is None:
            return
        try:
            conn.send(msg)
        except OSError:
            self._drop(client)

    # ---------------------------------------------------------------------------------------- loop
    def serve_forever(self) -> None:
        log.info("worker %d serving on %s", self.index, self.address)
        while not self.stopped:
            self._adopt()
            busy = self.backend.has_unfinished()
            for conn in wait(list(self.clients.values()), timeout=0 if busy else 0.05):
                client = next(c for c, k in self.clients.items() if k is conn)
                self._handle(client, conn)
            self._pump()

    def _pump(self) -> None:
        """One engine step; finished completions go back to their clients, grouped per call; clients still
        waiting get a heartbeat every HEARTBEAT_S."""
        if not self.backend.has_unfinished():
            return
        try:
            finished = self.backend.step()
        except Exception:
            self._fatal(traceback.format_exc())
        out: dict[tuple[int, int], list[tuple[int, Completion]]] = {}
        for rid, completion in finished:
            owner = self.requests.pop(rid, None)
            if owner is not None:
                out.setdefault(owner[:2], []).append((owner[2], completion))
        for (client, call), items in out.items():
            self._send(client, {"op": "completions", "call": call, "items": items})
        if time.monotonic() >= self._next_beat:
            for client in {c for c, _, _ in self.requests.values()}:
                self._send(client, {"op": "alive"})
            self._next_beat = time.monotonic() + HEARTBEAT_S

    def _drain(self) -> None:
        """Finish every in-flight request (before weights change or a probe runs)."""
        while self.backend.has_unfinished():
            self._pump()

    def _fatal(self, message: str) -> None:
        log.error("worker %d: engine failed:\n%s", self.index, message)
        for client in list(self.clients):
            self._send(client, {"op": "error", "kind": "engine", "message": f"worker {self.index}: {message}"})
        self.stopped = True
        self.listener.close()
        raise SystemExit(3)

    # ---------------------------------------------------------------------------------------- messages
    def _handle(self, client: int, conn: Connection) -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self._drop(client)
            return
        op = msg.get("op")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            self._send(client, {"op": "error", "kind": "protocol", "message": f"unknown op {op!r}"})
            return
        try:
            handler(client, msg)
        except SystemExit:
            raise
        except Exception:
            tb = traceback.format_exc()
            log.error("worker %d: %s failed:\n%s", self.index, op, tb)
            self._send(client, {"op": "error", "kind": op, "message": f"worker {self.index} {op}: {tb}"})

    def _op_hello(self, client: int, msg: dict) -> None:
        if msg.get("protocol") != PROTOCOL_VERSION:
            self._send(client, {"op": "error", "kind": "protocol",
                                "message": f"worker speaks protocol {PROTOCOL_VERSION}, trainer {msg.get('protocol')}: "
                                           "install the same rlkit version on both sides"})
            return
        self._send(client, {"op": "hello", "worker": self.index, "version": self.version, "run_id": self.run_id,
                            "pid": os.getpid(), "host": os.uname().nodename, "info": self.backend.info()})

    def _op_generate(self, client: int, msg: dict) -> None:
        if not self._current(msg.get("run_id"), msg.get("version")):
            self._send(client, {"op": "error", "kind": "version", "call": msg["call"],
                                "message": f"worker {self.index} holds weight version {self.version} "
                                           f"(run {self.run_id}), the request wants {msg.get('version')}"})
            return
        params: SamplingParams = msg["params"]
        for index, prompt_ids, seed in msg["items"]:
            rid = f"{client}:{msg['call']}:{index}"
            self.requests[rid] = (client, msg["call"], index)
            self.backend.add(rid, prompt_ids, seed, params)

    def _current(self, run_id: str | None, version: int | None) -> bool:
        if self.version < 0:
            return False                                     # a sync broke off half way
        return version == self.version and (self.version == 0 or run_id == self.run_id)

    def _op_cancel(self, client: int, msg: dict) -> None:
        mine = [rid for rid, (c, call, _) in self.requests.items() if c == client and call == msg["call"]]
        if mine:
            self.backend.abort(mine)
            for rid in mine:
                del self.requests[rid]

    def _op_join(self, client: int, msg: dict) -> None:
        self.backend.join(msg["addr"], msg["port"], msg["prefix"], 1 + self.backend.tp, msg["backend"],
                          msg["timeout_s"])
        self._send(client, {"op": "joined"})

    def _op_sync(self, client: int, msg: dict) -> None:
        self._drain()
        t0 = time.perf_counter()
        self.version = -1                                    # until every bucket has arrived
        self.backend.receive(msg["manifest"])
        self.version, self.run_id = msg["version"], msg["run_id"]
        self._send(client, {"op": "synced", "version": self.version, "seconds": time.perf_counter() - t0})

    def _op_probe(self, client: int, msg: dict) -> None:
        self._drain()
        self._send(client, {"op": "probe", "logprobs": self.backend.probe(msg["prompt_ids"], msg["response_ids"])})

    def _op_bye(self, client: int, msg: dict) -> None:
        self._drop(client)

    def close(self) -> None:
        self.stopped = True
        self.listener.close()
        for client in list(self.clients):
            self._drop(client)


def load_backend(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlkit.rollout.worker",
                                     description="one rlkit rollout worker (normally started by rlkit rollout-server)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="rlkit.rollout.worker:VLLMBackend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[worker {args.index}] %(asctime)s %(levelname)s %(message)s")
    key = authkey(args.host)
    backend = load_backend(args.backend)(
        model=args.model, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
        max_model_len=args.max_model_len, kv_cache_gib=args.kv_cache_gib,
        gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed)
    try:
        server = WorkerServer(backend, args.host, args.port, index=args.index, key=key)
    except OSError as exc:
        sys.exit(f"worker {args.index}: cannot listen on {args.host}:{args.port}: {exc} (is the port in use?)")
    print(f"rlkit rollout worker {args.index} ready on {server.address}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
