"""Tools: typed, docstringed Python functions (TRL's ``tools=[fn]`` convention) and running the calls a model makes.

A tool's JSON schema comes from ``transformers.utils.get_json_schema`` (type hints + Google-style docstring), so
what the chat template shows the model is exactly what TRL and vLLM would show it. Calls run through an executor
of :mod:`rlkit.sandbox`: killable worker processes for importable functions (a tool that hangs is killed at
``timeout_s``), or daemon threads for bound methods of a stateful environment object. Every failure -- unknown
tool, arguments that do not bind, an exception, a crash, a timeout, the per-episode call limit, a result that
does not fit -- becomes the call's result text (``"Error: ..."``), so the model reads it and the episode goes on;
the counts reach the metrics (``environment/tool_errors``, ``environment/tool_timeouts``).
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from rlkit.environments import python_tool
from rlkit.environments.base import ParseResult, ToolCall, ToolStats
from rlkit.sandbox import SandboxError, SandboxTimeout

BUILTIN_TOOLS = {"python": python_tool.WORKER_REF}   # by file path: the worker then imports only that file


@dataclass(frozen=True)
class Tool:
    name: str
    schema: dict[str, Any]           # {"type": "function", "function": {"name", "description", "parameters"}}
    fn: Callable[..., Any]           # the function (checked against; called by the thread executor)
    ref: str | Callable[..., Any]    # what the executor receives: an importable "module:attr" or the callable


def make_tool(fn: Callable[..., Any], ref: str | Callable[..., Any] | None = None) -> Tool:
    """A Tool from a typed function with a Google-style docstring; a clear error naming what is missing."""
    from transformers.utils import get_json_schema
    name = getattr(fn, "__name__", repr(fn))
    if not callable(fn):
        raise ValueError(f"tool {ref or name!r} is a {type(fn).__name__}, not a function")
    try:
        schema = get_json_schema(fn)
    except Exception as exc:  # noqa: BLE001  (transformers' DocstringParsing/TypeHintParsing exceptions)
        raise ValueError(f"tool '{name}' cannot be described to the model: {exc}. A tool needs a type hint on every "
                         "argument and a Google-style docstring with a description and an `Args:` entry per "
                         "argument (the TRL / transformers tools convention)") from exc
    return Tool(name=schema["function"]["name"], schema=schema, fn=fn, ref=ref if ref is not None else fn)


def load_tools(refs: list[str]) -> list[Tool]:
    """Tools named in a recipe: built-in names (``python``) or ``module:attr`` / ``path/file.py:attr``."""
    from rlkit.registry import import_object
    if not isinstance(refs, list) or not refs:
        raise ValueError(f"environment.tools must be a non-empty list of functions ('module:attr', "
                         f"'path/file.py:attr' or a built-in: {', '.join(BUILTIN_TOOLS)}), got {refs!r}")
    tools = []
    for ref in refs:
        target = BUILTIN_TOOLS.get(ref, ref)
        tools.append(make_tool(import_object(target), ref=target))
    check_unique(tools)
    return tools


def check_unique(tools: list[Tool]) -> None:
    seen: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in seen:
            raise ValueError(f"two tools are named '{tool.name}' ({seen[tool.name].ref!r} and {tool.ref!r}); the "
                             "model calls tools by name, so rename one of the functions")
        seen[tool.name] = tool


def _result_text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"\n... [truncated: {len(text) - limit} more characters]"


class Toolbox:
    """The tools of one environment (or one episode of a stateful environment) and the executor that runs them."""

    def __init__(self, tools: list[Tool], executor, *, max_result_chars: int = 4000):
        self.tools = {t.name: t for t in tools}
        self.executor, self.max_result_chars = executor, max_result_chars

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self.tools.values()]

    def _check_call(self, call: ToolCall) -> str | None:
        tool = self.tools.get(call.name)
        if tool is None:
            return f"unknown tool '{call.name}'; available tools: {', '.join(self.tools)}"
        try:
            inspect.signature(tool.fn).bind(**call.arguments)
        except TypeError as exc:
            return f"bad arguments for {call.name}: {exc}"
        return None

    def run(self, parsed: ParseResult, calls_left: int) -> Future:
        """Future[(messages, ToolStats)]: one tool message per call, in the order the model wrote them."""
        calls: list[ToolCall | str] = list(parsed.items)
        stats = ToolStats(calls=len(calls))
        slots: list[Any] = [None] * len(calls)
        pending: list[tuple[int, Future, float]] = []
        for i, call in enumerate(calls):
            problem = call if isinstance(call, str) else self._check_call(call)
            if problem is None and i >= calls_left:
                problem = "tool call limit of this episode reached (max_tool_calls); answer without tools"
            if problem is not None:
                slots[i] = ("error", problem)
                continue
            pending.append((i, self.executor.submit(self.tools[call.name].ref, dict(call.arguments)),
                            time.perf_counter()))
        return _join(calls, slots, pending, stats, self.max_result_chars)


def _join(calls, slots, pending, stats: ToolStats, limit: int) -> Future:
    """A Future that resolves when every call's future has, with the tool messages and the stats."""
    out: Future = Future()
    lock, left = threading.Lock(), [len(pending)]

    def finish() -> None:
        messages = []
        for call, (kind, text) in zip(calls, slots):
            stats.errors += kind == "error"
            messages.append({"role": "tool", "name": call.name if isinstance(call, ToolCall) else "invalid",
                             "content": _result_text(text if kind == "ok" else f"Error: {text}", limit)})
        out.set_result((messages, stats))

    def done(i: int, started: float, fut: Future) -> None:
        error = None
        try:
            slots[i] = ("ok", fut.result())
        except SandboxError as exc:   # a crash, a call error, or a SandboxTimeout (counted below)
            slots[i], error = ("error", str(exc)), exc
        except Exception as exc:  # noqa: BLE001  (an executor bug must not hang the episode)
            slots[i] = ("error", f"{type(exc).__name__}: {exc}")
        with lock:
            stats.timeouts += isinstance(error, SandboxTimeout)
            stats.seconds += time.perf_counter() - started
            left[0] -= 1
            last = left[0] == 0
        if last:
            finish()

    if not pending:
        finish()
    for i, fut, started in pending:
        fut.add_done_callback(lambda f, i=i, s=started: done(i, s, f))
    return out
