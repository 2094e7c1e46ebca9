"""The built-in ``python`` tool: run a snippet, return what it printed (plus the error, if it raised).

Meant to run inside a :class:`rlkit.sandbox.ProcessExecutor` worker, which supplies the limits (wall clock, CPU,
memory, no network, a fresh working directory per call); the function itself does not fork and has no timeout.
Called in the trainer's own process it runs the code there, unprotected.

What it does: ``exec`` of ``code`` in a fresh globals dict (``__name__ == "__main__"``), with ``sys.stdout`` and
``sys.stderr`` redirected into one bounded buffer (``contextlib.redirect_stdout/err``). Output longer than
MAX_OUTPUT_CHARS keeps its first and last halves around a marker saying how much was cut. An exception appends
its traceback (frames of the snippet only, at most MAX_TRACEBACK_LINES lines); ``SystemExit`` with a non-zero
code appends ``SystemExit: <code>``. Nothing printed gives NO_OUTPUT.

Not captured: writes to file descriptors 1 and 2 that bypass ``sys.stdout`` (``os.system``, subprocesses, C
extensions) go to the worker's own stdout/stderr. The redirect is process-wide, so two calls in threads of one
process would mix their output: run it in worker processes. Calls in one worker share imported modules (fresh
globals, not a fresh interpreter).

Imports only the standard library (no torch, no other rlkit module). A worker resolving
``"rlkit.environments.python_tool:python"`` still runs ``rlkit/environments/__init__.py`` (and what that
imports); WORKER_REF names this file by path, so a worker loads it alone.
"""

from __future__ import annotations

import contextlib
import io
import traceback
from pathlib import Path

WORKER_REF = f"{Path(__file__).resolve()}:python"   # for ProcessExecutor.submit: loads only this file
MAX_OUTPUT_CHARS = 4000
MAX_TRACEBACK_LINES = 20
NO_OUTPUT = "(no output)"


class _BoundedOutput(io.TextIOBase):
    """A text stream keeping the first and the last ``half`` characters written, counting the rest."""

    def __init__(self, half: int):
        self.half, self.total, self.head, self.tail = half, 0, "", ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        n = len(text)
        self.total += n
        room = self.half - len(self.head)
        if room > 0:
            self.head += text[:room]
            text = text[room:]
        if text:
            self.tail += text
            if len(self.tail) > 4 * self.half:
                self.tail = self.tail[-self.half:]
        return n

    def value(self) -> str:
        tail = self.tail[-self.half:]
        cut = self.total - len(self.head) - len(tail)
        return self.head + (f"\n... [{cut} characters cut] ...\n" if cut else "") + tail


def _traceback_text(exc: BaseException) -> str:
    """The snippet's part of the traceback (the exec frame left out), at most MAX_TRACEBACK_LINES lines."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").splitlines()
    if len(lines) > MAX_TRACEBACK_LINES:
        lines = [lines[0], "  ..."] + lines[-(MAX_TRACEBACK_LINES - 2):]
    return "\n".join(lines)


def python(code: str) -> str:
    """Run a Python snippet and return what it printed.

    Args:
        code: Python source code to execute; use print() to show results.
    """
    out = _BoundedOutput(MAX_OUTPUT_CHARS // 2)
    error = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, "<code>", "exec"), {"__name__": "__main__"})  # noqa: S102  (the tool's purpose)
        except SystemExit as exc:
            error = "" if exc.code in (None, 0) else f"SystemExit: {exc.code}"
        except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt included: report, do not die)
            error = _traceback_text(exc)
    text = out.value()
    if error:
        text += ("" if not text or text.endswith("\n") else "\n") + error
    return text or NO_OUTPUT
