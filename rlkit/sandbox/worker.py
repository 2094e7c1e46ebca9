"""The worker process: isolate the network, set rlimits, then run one call at a time from the parent's pipe.

Started by :class:`rlkit.sandbox.process.ProcessExecutor` as a fresh interpreter (already a session and
process-group leader). Standard library only; a function's own imports happen when it is first resolved.

Frames on the pipe (``send_bytes``): parent -> worker ``pickle((call_bytes, workdir, cpu_seconds))`` with
``call_bytes = pickle((fn, kwargs))``; worker -> parent ``b"S"`` once the function is loaded (the call's clock
starts), then ``b"R" + pickle(result)`` or ``b"E" + pickle(SandboxCallError)``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import functools
import inspect
import os
import pickle
import resource
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from rlkit.sandbox.common import SandboxCallError, SandboxLimits, call_error, resolve

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SKIP = (__file__,)               # frames of this file are left out of a call's traceback


def isolate_network() -> tuple[bool, str]:
    """Move this (single-threaded) process into a new network namespace; (isolated, how)."""
    if not sys.platform.startswith("linux"):
        return False, f"no network namespaces on {sys.platform}"
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        how = "new user+network namespace"
        try:  # keep our uid/gid inside the namespace: unmapped ids cannot create files (EOVERFLOW)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        except OSError as exc:
            how += f" (uid/gid not mapped: {exc}; creating files may fail)"
    else:
        first = os.strerror(ctypes.get_errno())
        if libc.unshare(CLONE_NEWNET) != 0:
            return False, (f"unshare(CLONE_NEWUSER|CLONE_NEWNET) failed ({first}) and unshare(CLONE_NEWNET) "
                           f"failed ({os.strerror(ctypes.get_errno())}); the network is reachable")
        how = "new network namespace"
    return True, f"{how}; loopback {'up' if _loopback_up() else 'down'}"


def _loopback_up() -> bool:
    """Bring ``lo`` up in the new namespace (127.0.0.1 servers inside one call keep working)."""
    import fcntl
    import socket
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            ifreq = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
        return True
    except OSError:
        return False


def _lower(which: int, value: int) -> None:
    """Set soft = hard = ``value`` (never above the current hard limit)."""
    _, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def apply_limits(limits: SandboxLimits) -> None:
    """No core dumps; RLIMIT_AS and RLIMIT_NPROC from ``limits`` (RLIMIT_CPU is set per call)."""
    _lower(resource.RLIMIT_CORE, 0)
    if limits.memory_mb is not None:
        _lower(resource.RLIMIT_AS, int(limits.memory_mb) << 20)
    if limits.max_processes is not None:
        _lower(resource.RLIMIT_NPROC, int(limits.max_processes))


def set_cpu_limit(seconds: int) -> None:
    """Soft RLIMIT_CPU = CPU time used so far + ``seconds`` (SIGXCPU kills the worker past it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime) + 1 + seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def lift_cpu_limit() -> None:
    """Soft RLIMIT_CPU back to the hard limit (between calls)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))


def _children() -> set[int]:
    """Pids of this worker's child processes (every descendant that outlived its parent, as a subreaper)."""
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.update(int(p) for p in fh.read().split())
        except OSError:
            continue
    return pids


def kill_leftovers() -> None:
    """SIGKILL and reap every process a call left running (a subreaper inherits all of them)."""
    for _ in range(100):                       # each round kills one generation; orphans come back to us
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass                           # reap what already exited
        except ChildProcessError:
            return                             # no children at all: no descendants either
        pids = _children()
        if not pids:
            return                             # alive but not listed (no /proc children files): give up
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap(pids, deadline=time.monotonic() + 1.0)


def _reap(pids: set[int], deadline: float) -> None:
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pending.discard(pid)
            except ChildProcessError:
                pending.discard(pid)
        if pending:
            time.sleep(0.005)


def _run(fn: Callable[..., Any], kwargs: dict[str, Any], workdir: str | None, base: str) -> Any:
    if workdir is not None:
        os.chdir(workdir)
    try:
        result = fn(**kwargs)
        if inspect.iscoroutine(result):
            import asyncio
            result = asyncio.run(result)
        return result
    finally:
        os.chdir(base)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()


def _error(exc: SandboxCallError) -> bytes:
    return b"E" + pickle.dumps(exc)


def handle(conn: Connection, frame: bytes, cache: dict[str, Callable[..., Any]], limits: SandboxLimits,
           base: str) -> bytes:
    """One call: load the function, signal b"S", run it, return the reply frame."""
    try:
        call_bytes, workdir, cpu_seconds = pickle.loads(frame)
        fn, kwargs = pickle.loads(call_bytes)
        if isinstance(fn, tuple):                # (wrapper ref, function ref): wrapper(function, **kwargs)
            wrapper, inner = (cache[r] if r in cache else cache.setdefault(r, resolve(r)) for r in fn)
            fn = functools.partial(wrapper, inner)
        elif isinstance(fn, str):
            fn = cache[fn] if fn in cache else cache.setdefault(fn, resolve(fn))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        err = call_error(exc, SKIP)
        return _error(SandboxCallError(f"cannot load the function or its arguments in the worker: {err}",
                                       err.exc_type, err.remote_traceback))
    conn.send_bytes(b"S")
    try:
        set_cpu_limit(cpu_seconds)
        result = _run(fn, kwargs, workdir, base)
    except BaseException as exc:  # noqa: BLE001  (SystemExit and KeyboardInterrupt included)
        return _error(call_error(exc, SKIP))
    finally:
        lift_cpu_limit()                       # loading the next function must not run on this call's budget
        kill_leftovers()
    try:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:  # noqa: BLE001
        return _error(SandboxCallError(f"the result ({type(result).__name__}) cannot be pickled: {exc}; return "
                                       f"plain data (str, numbers, lists, dicts)", type(exc).__name__))
    if len(data) + 1 > limits.max_output_bytes:
        return _error(SandboxCallError(f"the result is {len(data)} bytes pickled, over max_output_bytes="
                                       f"{limits.max_output_bytes}; return less", "OverflowError"))
    return b"R" + data


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent's driver thread dies; adopt orphaned descendants (for kill_leftovers)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent_pid:
        os._exit(0)


def main(conn: Connection) -> None:
    """Worker entry point (after the bootstrap set ``sys.path``)."""
    limits, parent_pid = conn.recv()
    isolated, how = isolate_network() if limits.no_network else (False, "not requested (no_network=False)")
    _die_with_parent(parent_pid)
    apply_limits(limits)
    faulthandler.enable()
    conn.send(("ready", os.getpid(), isolated, how))
    base, cache = os.getcwd(), {}
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        conn.send_bytes(handle(conn, frame, cache, limits, base))
