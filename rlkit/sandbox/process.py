"""ProcessExecutor: N long-lived worker processes driven by parent-side threads over ``multiprocessing.Pipe``.

Each worker is a fresh interpreter (``subprocess`` fork+exec, what multiprocessing's "spawn" start method does,
so it is safe beside torch/vLLM threads) started as its own session, so a timeout kills its whole process group.
Unlike ``multiprocessing``'s spawn it does not re-import the parent's ``__main__`` (under the ``rlkit`` console
script or a training script that would import torch in every worker). One driver thread per worker takes calls
from a shared queue, so up to ``workers`` calls run at once and futures resolve as their calls finish.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from rlkit.sandbox.common import (SandboxCallError, SandboxCrash, SandboxError, SandboxLimits, SandboxTimeout,
                                  fail_queued, start_drivers)
from rlkit.sandbox.spawn import POLL_S, Worker, death_message, launch, startup_error, wait_ready

STARTUP_TIMEOUT_S = 60.0   # a worker must start, and load a function, within this (imports included)
REPLY_SLACK_BYTES = 1 << 16


@dataclass
class _Job:
    call: bytes                # pickle((fn, kwargs))
    timeout_s: float
    future: Future


class _Closed(SandboxError):
    pass


class ProcessExecutor:
    """N long-lived worker processes with limits; ``submit`` returns a Future (see the package docstring)."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int = 2, name: str = "sandbox", *,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S):
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"ProcessExecutor(workers={workers!r}): need an int >= 1")
        self.limits, self.name, self.startup_timeout_s = limits, name, float(startup_timeout_s)
        self.network_isolated: bool | None = None   # set when the first worker reports
        self.network_note = ""                      # how (or why not), in words
        self._cwd = os.getcwd()                     # workers start here: relative 'path/file.py:attr' resolve
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: list[Worker | None] = [None] * workers
        self._start_failed = [False] * workers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False                        # no new calls; running ones stop
        self._close_done = False                    # close() ran (request_close() only sets _closed)
        self._root: str | None = None               # parent of the per-call working directories
        atexit.register(_close_if_alive, weakref.ref(self))

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int | None]:
        """Pid of each worker slot (None: not started, or killed and not yet replaced)."""
        return [w.proc.pid if w is not None else None for w in self._workers]

    def submit(self, fn: str | Callable[..., Any], kwargs: dict[str, Any] | None = None, *,
               timeout_s: float | None = None) -> Future:
        """Queue ``fn(**kwargs)``; the future holds its result or raises a SandboxError subclass. ``fn`` is a
        reference string, a picklable function, or a pair of references ``(wrapper, function)``, called as
        ``wrapper(function, **kwargs)``; references are resolved (imported) before the call's time starts."""
        timeout_s = self.limits.timeout_s if timeout_s is None else float(timeout_s)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        future: Future = Future()
        try:
            call = pickle.dumps((fn, dict(kwargs or {})), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001  (lambdas, closures, open files ...)
            future.set_exception(SandboxCallError(
                f"cannot send {fn!r:.80} and its arguments to a worker process ({type(exc).__name__}: {exc}); pass "
                f"a 'module:attr' string or a module-level function, and picklable arguments", type(exc).__name__))
            return future
        with self._lock:
            if self._closed:
                raise SandboxError(f"ProcessExecutor '{self.name}' is closed; create a new one")
            if not self._threads:
                self._threads = start_drivers(self.name, len(self._workers), self._drive)
            self._queue.put(_Job(call, timeout_s, future))
        return future

    def call(self, fn: str | Callable[..., Any], kwargs: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> Any:
        """``submit(...).result()``: blocks until the call finishes, is killed, or fails."""
        return self.submit(fn, kwargs, timeout_s=timeout_s).result()

    def close(self) -> None:
        """Kill every worker and fail queued calls; idempotent (also run by ``with`` and at exit)."""
        with self._lock:
            if self._close_done:
                return
            self._closed = self._close_done = True
        fail_queued(self._queue, lambda: _Closed(f"ProcessExecutor '{self.name}' was closed before the call ran"))
        for _ in self._threads:
            self._queue.put(None)
        for slot in range(len(self._workers)):
            self._discard(slot)
        for thread in self._threads:
            thread.join(timeout=5.0)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def request_close(self) -> None:
        """Ask the drivers to kill their workers and stop, without waiting or taking a lock: safe in a
        ``weakref.finalize`` callback or ``__del__``. Queued calls fail as closed; ``close()`` still cleans up."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)                  # SimpleQueue.put is reentrant-safe

    # ---- driver side (one thread per worker slot) ----

    def _drive(self, slot: int) -> None:
        self._warm(slot)
        while True:
            job = self._queue.get()
            if job is None:
                self._discard(slot)
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(self._run(slot, job))
            except SandboxError as exc:
                job.future.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001  (a bug here must not leave the future pending)
                job.future.set_exception(SandboxError(f"sandbox driver error: {type(exc).__name__}: {exc}"))
            self._warm(slot)

    def _warm(self, slot: int) -> None:
        """Start this slot's worker ahead of its next call (unless the last start failed)."""
        if self._workers[slot] is None and not self._start_failed[slot] and not self._closed:
            try:
                self._start(slot)
            except SandboxError:
                pass

    def _run(self, slot: int, job: _Job) -> Any:
        worker = self._workers[slot] or self._start(slot)
        workdir = tempfile.mkdtemp(prefix="call-", dir=self._workdir_root()) if self.limits.fresh_workdir else None
        cpu_seconds = self.limits.cpu_seconds(job.timeout_s)
        try:
            try:
                worker.conn.send_bytes(pickle.dumps((job.call, workdir, cpu_seconds)))
            except OSError:
                raise SandboxCrash(death_message(self._discard(slot), self.limits, cpu_seconds)) from None
            reply = self._receive(slot, self.startup_timeout_s, None, cpu_seconds)
            if reply == b"S":                       # the function is loaded: the call's clock starts now
                reply = self._receive(slot, job.timeout_s, job.timeout_s, cpu_seconds)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        return self._decode(reply)

    def _decode(self, reply: bytes) -> Any:
        tag, data = reply[:1], reply[1:]
        if tag == b"E":
            raise pickle.loads(data)
        try:
            return pickle.loads(data)
        except Exception as exc:  # noqa: BLE001
            raise SandboxCallError(f"the result could not be unpickled in the parent ({type(exc).__name__}: "
                                   f"{exc}); return plain data (str, numbers, lists, dicts)", type(exc).__name__)

    def _receive(self, slot: int, seconds: float, timeout_s: float | None, cpu_seconds: int) -> bytes:
        """The worker's next frame within ``seconds``; else kill it (SandboxTimeout for a call, else Crash)."""
        worker = self._workers[slot]
        deadline = time.monotonic() + seconds
        while True:
            if self._closed or worker is None:
                self._discard(slot)
                raise _Closed(f"ProcessExecutor '{self.name}' was closed while the call was running")
            left = deadline - time.monotonic()
            if left <= 0:
                self._discard(slot)
                if timeout_s is not None:
                    raise SandboxTimeout(f"timed out after {timeout_s:g} s (timeout_s): the call was killed, with "
                                         f"every process it started")
                raise SandboxCrash(f"the worker did not load the function within {seconds:g} s and was killed")
            try:
                if worker.conn.poll(min(left, POLL_S)):
                    return worker.conn.recv_bytes(self.limits.max_output_bytes + REPLY_SLACK_BYTES)
            except EOFError:
                pass                                 # the worker died
            except OSError as exc:                   # closed by close(), or an oversized frame
                self._discard(slot)
                if self._closed:
                    raise _Closed(f"ProcessExecutor '{self.name}' was closed while the call was running") from None
                raise SandboxCallError(f"the worker sent an invalid reply ({exc})", type(exc).__name__) from None
            else:
                if not worker.exited():
                    continue
            code = self._discard(slot)
            if self._closed:
                raise _Closed(f"ProcessExecutor '{self.name}' was closed while the call was running")
            raise SandboxCrash(death_message(code, self.limits, cpu_seconds))

    def _start(self, slot: int) -> Worker:
        """Start a worker for ``slot`` and wait (startup_timeout_s) for its ready message."""
        self._start_failed[slot] = True
        if self._closed:
            raise _Closed(f"ProcessExecutor '{self.name}' is closed")
        worker = launch(self.limits, self._cwd)
        with self._lock:
            self._workers[slot] = worker
        message = wait_ready(worker, self.startup_timeout_s, lambda: self._closed)
        if message[0] != "ready":
            code = self._discard(slot)
            if message[0] == "closed":
                raise _Closed(f"ProcessExecutor '{self.name}' was closed while a worker was starting")
            raise startup_error(message, code, self.limits, self.startup_timeout_s)
        if self.network_isolated is None:
            self.network_isolated, self.network_note = message[2], message[3]
        self._start_failed[slot] = False
        return worker

    def _discard(self, slot: int) -> int | None:
        """Kill this slot's worker and its process group, reap it; returns its return code (None: no worker)."""
        with self._lock:
            worker, self._workers[slot] = self._workers[slot], None
        return None if worker is None else worker.kill()

    def _workdir_root(self) -> str:
        with self._lock:
            if self._root is None:
                self._root = tempfile.mkdtemp(prefix=f"rlkit-{self.name}-")
        return self._root


def _close_if_alive(ref: weakref.ref) -> None:
    executor = ref()
    if executor is not None:
        executor.close()
