"""What both sides of the sandbox share: limits, errors, resolving a function reference, describing an exception.

Imported by the worker process too, so it imports only the standard library (``rlkit.registry`` lazily, and
only for string references).
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from typing import Any, Callable

MAX_MESSAGE_CHARS = 2000       # one-line error message
MAX_TRACEBACK_CHARS = 20000    # remote traceback text (its end is kept)


class SandboxError(RuntimeError):
    """Base of every sandbox failure; ``str(exc)`` is one line, fit to show to a model."""


class SandboxTimeout(SandboxError):
    """The call ran past its wall-clock ``timeout_s``; the worker and its process group were killed."""


class SandboxCrash(SandboxError):
    """The worker died (segfault, ``os._exit``, OOM kill, an rlimit) or did not start in time."""


class SandboxCallError(SandboxError):
    """The function raised, or its arguments / result could not cross the process boundary.

    ``str(exc)`` is ``"ExcType: message"`` plus where it was raised; ``exc_type`` is the type name and
    ``remote_traceback`` the full traceback text from the worker ("" when there is none)."""

    def __init__(self, message: str, exc_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:  # keep both attributes across the pipe
        return type(self), (str(self), self.exc_type, self.remote_traceback)


@dataclass(frozen=True)
class SandboxLimits:
    """Per-worker limits (see the package docstring for what each one does and does not guarantee)."""

    timeout_s: float = 10.0            # per call wall clock; hard kill (SIGKILL of the worker's process group)
    cpu_s: float | None = None         # RLIMIT_CPU per call (None = timeout_s); whole seconds, <= 1 s slack
    memory_mb: int | None = 2048       # RLIMIT_AS of the worker (virtual address space, not resident memory)
    max_processes: int | None = 64     # RLIMIT_NPROC (per real user id; not enforced for root)
    max_output_bytes: int = 1 << 20    # cap on a pickled result
    no_network: bool = True            # unshare(CLONE_NEWUSER|CLONE_NEWNET) in the worker, when the kernel allows
    fresh_workdir: bool = True         # each call runs in a new temporary directory (removed afterwards)

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"SandboxLimits.timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        for field_name in ("cpu_s", "memory_mb", "max_processes"):
            value = getattr(self, field_name)
            if value is not None and not value > 0:
                raise ValueError(f"SandboxLimits.{field_name} must be > 0 or None (no limit), got {value!r}")
        if self.max_output_bytes <= 0:
            raise ValueError(f"SandboxLimits.max_output_bytes must be > 0, got {self.max_output_bytes!r}")

    def cpu_seconds(self, timeout_s: float | None = None) -> int:
        """CPU seconds one call may use: ``cpu_s``, else the call's timeout rounded up."""
        return math.ceil(self.cpu_s if self.cpu_s is not None else (timeout_s or self.timeout_s))


def resolve(ref: str) -> Callable[..., Any]:
    """``"module:attr"`` / ``"path/file.py:attr"`` -> the object; a bare name -> the registered reward."""
    from rlkit.registry import REWARDS, import_object  # lazy: only string references need the registry

    if ":" in ref:
        return import_object(ref)
    import rewards  # noqa: F401  (registers the built-in rewards)
    return REWARDS.get(ref)


def call_error(exc: BaseException, skip_files: tuple[str, ...] = ()) -> SandboxCallError:
    """A picklable SandboxCallError describing ``exc`` (its class need not be picklable).

    Leading traceback frames from ``skip_files`` (the sandbox's own code) and from modules that set
    ``__sandbox_wrapper__ = True`` (call wrappers such as ``rlkit.reward_calls``) are left out; the message is one line
    of at most MAX_MESSAGE_CHARS, the traceback text at most MAX_TRACEBACK_CHARS (its end is kept)."""
    tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename in skip_files
                              or tb.tb_frame.f_globals.get("__sandbox_wrapper__")):
        tb = tb.tb_next
    message = " ".join(str(exc).split("\n")).strip()
    summary = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(tb)
    if frames:
        last = frames[-1]
        summary += f" (at {last.filename.rpartition('/')[2]}:{last.lineno} in {last.name})"
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return SandboxCallError(clip(summary, MAX_MESSAGE_CHARS), type(exc).__name__, text[-MAX_TRACEBACK_CHARS:])


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 20] + " ... [truncated]"


def start_drivers(name: str, count: int, drive) -> list:
    """``count`` daemon threads running ``drive(i)``, started: the parent-side drivers of an executor."""
    import threading
    threads = [threading.Thread(target=drive, args=(i,), name=f"rlkit-{name}-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def fail_queued(jobs, error) -> None:
    """Fail every call still queued in ``jobs`` (a queue of jobs with a ``future``) with ``error()``."""
    import queue
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        if job is not None and job.future.set_running_or_notify_cancel():
            job.future.set_exception(error())
