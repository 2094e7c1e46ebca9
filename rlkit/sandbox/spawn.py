"""Starting, watching and killing one worker process (parent side), for :mod:`rlkit.sandbox.process`.

A worker is a fresh interpreter started with ``subprocess`` (fork+exec) as a new session, so its pid is also
its process-group id and one ``killpg`` ends it and every child it started. The bootstrap sets ``sys.path`` to
the parent's before importing :mod:`rlkit.sandbox.worker`, and reports an import failure over the pipe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Callable

from rlkit.sandbox.common import MAX_MESSAGE_CHARS, SandboxCrash, SandboxLimits, clip

POLL_S = 0.05              # how often a waiting parent checks that its worker is alive
BOOT = """import sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
try:
    sys.path[:] = conn.recv()
    from rlkit.sandbox.worker import main
except BaseException:
    import traceback
    conn.send(("failed", traceback.format_exc()))
    raise
main(conn)
"""


@dataclass
class Worker:
    """One running worker: its process and the parent's end of the pipe."""

    proc: subprocess.Popen
    conn: Connection

    def exited(self) -> bool:
        """Has it exited? Without reaping it, so its pid (= process group id) stays ours until ``kill``."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill(self) -> int | None:
        """SIGKILL its process group, reap it, close the pipe; its return code (None: still not reaped)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # before reaping: the group id cannot be reused yet
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = self.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            code = None
        self.conn.close()
        return code


def launch(limits: SandboxLimits, cwd: str) -> Worker:
    """Start a worker in ``cwd`` and send it the parent's ``sys.path`` and the limits."""
    parent_end, child_end = Pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-c", BOOT, str(child_end.fileno())],
                                pass_fds=(child_end.fileno(),), start_new_session=True,
                                stdin=subprocess.DEVNULL, cwd=cwd)
    except OSError as exc:
        parent_end.close()
        raise SandboxCrash(f"could not start a worker process: {exc}") from exc
    finally:
        child_end.close()
    worker = Worker(proc, parent_end)
    try:
        parent_end.send(list(sys.path))
        parent_end.send((limits, os.getpid()))
    except OSError:
        pass                                       # it died at once: wait_ready reports it
    return worker


def wait_ready(worker: Worker, seconds: float, closed: Callable[[], bool]) -> tuple:
    """The worker's first message: ``("ready", pid, isolated, note)``, ``("failed", traceback)``, or
    ``("died",)`` / ``("timeout",)`` / ``("closed",)`` (``closed()`` turned true while waiting)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not closed():
        try:
            if worker.conn.poll(POLL_S):
                return worker.conn.recv()
        except (EOFError, OSError):
            return ("closed",) if closed() else ("died",)
        if worker.exited() and not worker.conn.poll(0):
            return ("died",)
    return ("closed",) if closed() else ("timeout",)


def startup_error(message: tuple, code: int | None, limits: SandboxLimits, seconds: float) -> SandboxCrash:
    """The SandboxCrash for a worker whose first message was not "ready"."""
    if message[0] == "failed":
        last = message[1].strip().splitlines()[-1]
        return SandboxCrash(clip(f"the worker process failed to start: {last} (traceback: {message[1]!r})",
                                 MAX_MESSAGE_CHARS))
    if message[0] == "died":
        return SandboxCrash(f"the worker process exited during start-up (return code {code}); its stderr may say "
                            f"why (memory_mb={limits.memory_mb} too low?)")
    return SandboxCrash(f"the worker process did not start within {seconds:g} s (startup_timeout_s) and was killed")


def death_message(code: int | None, limits: SandboxLimits, cpu_seconds: int) -> str:
    """One line saying how the worker died, from its return code."""
    if code is None:
        return "the worker process died (its exit status is unknown)"
    if code >= 0:
        return (f"the worker process exited with code {code} during the call (os._exit or a fatal error; its "
                f"stderr may say more)")
    sig = -code
    if sig == signal.SIGXCPU:
        return f"the call used more than its CPU time limit ({cpu_seconds} s, SandboxLimits.cpu_s) and was killed"
    if sig == signal.SIGKILL:
        return (f"the worker process was killed by SIGKILL (out of memory? memory_mb={limits.memory_mb}; or "
                f"killed from outside)")
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    return f"the worker process died from {name}" + (" (segmentation fault)" if sig == signal.SIGSEGV else "")
