"""Tool-call parsers: one model turn's text -> :class:`ParseResult` (well-formed calls + one error per bad call).

A parser is any callable ``parse(text: str) -> ParseResult``, registered in ``TOOL_PARSERS`` (``rlkit list
tool_parser``) or named as ``module:attr`` / ``path/file.py:attr`` in ``environment.parser``.

``hermes`` (Hermes / Qwen2.5 / Qwen3 format, what their chat templates teach):

    <tool_call>
    {"name": "multiply", "arguments": {"a": 37, "b": 52}}
    </tool_call>

Every ``<tool_call>...</tool_call>`` block is one call; an unclosed final block counts too (the model may stop at
its end-of-turn token right after the JSON). The JSON must be an object with a string ``name`` and an object
``arguments`` (``"parameters"`` is accepted as its alias, as some models write it; a missing one means no
arguments; a JSON *string* holding an object is decoded, as OpenAI-style models emit). Anything else is an error
fed back to the model as the call's result, so malformed JSON costs the episode one turn, not the run.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from rlkit.environments.base import ParseResult, ToolCall
from rlkit.registry import TOOL_PARSERS, PluginError
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def _decode_call(raw: str) -> ToolCall | str:
    """A ToolCall, or the error message for the model."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"malformed tool call: invalid JSON ({exc.msg} at position {exc.pos}); write " \
               '{"name": ..., "arguments": {...}} inside <tool_call></tool_call>'
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return 'malformed tool call: expected a JSON object with a string "name" and an object "arguments"'
    args: Any = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return f'malformed tool call to {obj["name"]}: "arguments" must be a JSON object, got {type(args).__name__}'
    return ToolCall(name=obj["name"], arguments=args)


@TOOL_PARSERS.register("hermes")
def hermes(text: str) -> ParseResult:
    """<tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks (Hermes, Qwen2.5, Qwen3)."""
    return ParseResult(items=tuple(_decode_call(m.group(1).strip()) for m in _BLOCK.finditer(text)))


def resolve_parser(name: str) -> Callable[[str], ParseResult]:
    """The parser named in a recipe; a clear error for unknown names and non-callables."""
    parser = TOOL_PARSERS.get(name)
    if not callable(parser):
        raise PluginError(f"environment.parser '{name}' is a {type(parser).__name__}, not a function "
                          "parse(text: str) -> rlkit.environments.ParseResult")
    return parser
