"""ThreadExecutor: the ProcessExecutor interface on daemon threads of this process (no isolation, no kill).

For functions that cannot cross a process boundary (they hold a model, a client, a lock). Only ``timeout_s`` of
the limits applies: a call past it raises SandboxTimeout, but Python cannot kill a thread, so the call keeps
running in the background as a leaked daemon thread (counted in ``leaked_threads``; it never blocks interpreter
exit). ``memory_mb``, ``cpu_s``, ``max_processes``, ``no_network`` and ``fresh_workdir`` are ignored (the working
directory is process-wide), and ``max_output_bytes`` too (nothing is pickled).
"""

from __future__ import annotations

import inspect
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from rlkit.sandbox.common import (SandboxError, SandboxLimits, SandboxTimeout, call_error, fail_queued, resolve,
                                  start_drivers)

SKIP = (__file__,)


@dataclass
class _Job:
    fn: str | Callable[..., Any]
    kwargs: dict[str, Any]
    timeout_s: float
    future: Future


class ThreadExecutor:
    """Same interface as ProcessExecutor; calls run in daemon threads (see the module docstring)."""

    network_isolated: bool | None = False
    network_note = "threads share the trainer's network"

    def __init__(self, limits: SandboxLimits = SandboxLimits(), workers: int = 2, name: str = "sandbox"):
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"ThreadExecutor(workers={workers!r}): need an int >= 1")
        self.limits, self.name, self.workers = limits, name, workers
        self.leaked_threads = 0
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._cache: dict[str, Callable[..., Any]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> ThreadExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, fn: str | Callable[..., Any], kwargs: dict[str, Any] | None = None, *,
               timeout_s: float | None = None) -> Future:
        """Queue ``fn(**kwargs)``; the future holds its result or raises a SandboxError subclass."""
        timeout_s = self.limits.timeout_s if timeout_s is None else float(timeout_s)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise SandboxError(f"ThreadExecutor '{self.name}' is closed; create a new one")
            if not self._threads:
                self._threads = start_drivers(self.name, self.workers, lambda _: self._drive())
            self._queue.put(_Job(fn, dict(kwargs or {}), timeout_s, future))
        return future

    def call(self, fn: str | Callable[..., Any], kwargs: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> Any:
        """``submit(...).result()``."""
        return self.submit(fn, kwargs, timeout_s=timeout_s).result()

    def close(self) -> None:
        """Stop the dispatchers and fail queued calls; idempotent. Leaked threads keep running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        fail_queued(self._queue, lambda: SandboxError(f"ThreadExecutor '{self.name}' was closed before the call ran"))
        for _ in self._threads:
            self._queue.put(None)

    def _drive(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.future.set_running_or_notify_cancel():
                self._run(job)

    def _run(self, job: _Job) -> None:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                fn = self._resolve(job.fn)
                result = fn(**job.kwargs)
                if inspect.iscoroutine(result):
                    import asyncio
                    result = asyncio.run(result)
                box["value"] = result
            except BaseException as exc:  # noqa: BLE001  (handed to the future)
                box["error"] = call_error(exc, SKIP)

        thread = threading.Thread(target=target, name=f"rlkit-{self.name}-call", daemon=True)
        thread.start()
        thread.join(job.timeout_s)
        if thread.is_alive():
            with self._lock:
                self.leaked_threads += 1
            job.future.set_exception(SandboxTimeout(
                f"timed out after {job.timeout_s:g} s (timeout_s); the call keeps running in a leaked thread"))
        elif "error" in box:
            job.future.set_exception(box["error"])
        else:
            job.future.set_result(box["value"])

    def _resolve(self, fn: str | Callable[..., Any]) -> Callable[..., Any]:
        if not isinstance(fn, str):
            return fn
        with self._cache_lock:
            if fn not in self._cache:
                self._cache[fn] = resolve(fn)
            return self._cache[fn]

