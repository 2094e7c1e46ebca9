"""``environment: tools`` -- tool-calling episodes (TRL ``tools=[fn]``, verl's tool agent loop, verifiers' ToolEnv).

Loop per episode (the runner, :mod:`rlkit.environments.runner`, owns the tokens):

    prompt = chat_template(row's messages, tools=schemas, add_generation_prompt=True)
    repeat: model turn -> parser -> no call: the episode ends (the turn is the answer)
                                 -> calls: run them (in parallel, killable), append one tool message each
    until max_turns model turns, or max_total_tokens (prompt + every token) is spent

Options: ``tools`` (importable functions: ``module:attr``, ``path/file.py:attr``, or the built-in ``python``
code tool), ``max_turns`` (model turns, default 4), ``max_tool_calls`` (per episode, default 8; further calls
get an error result), ``max_total_tokens`` (token budget of the episode, prompt included; null = none beyond
``max_turns`` x ``rollout.max_new_tokens``), ``tool_timeout_s`` (per call, hard kill), ``parser`` (``hermes``
or ``module:attr``), ``executor`` (``process``: killable worker processes with limits, the default; ``thread``:
in-process threads, for tools that need the trainer's memory -- a hung call then leaks its thread),
``workers`` (parallel tool processes), ``memory_mb`` (address-space limit per tool process),
``max_result_chars`` (longer results are cut, with a marker), and the tokenization canary's
``drift_check_episodes`` / ``max_token_drift`` (:mod:`rlkit.environments.canary`).

Rewards score the episode's final model turn (its text, as ``completions``); the rest of the episode is in the
samples table and the metrics. Deviation from TRL: TRL renders each call's result with ``str(result)`` and
re-tokenizes the conversation per turn; rlkit appends only the rendered tool messages (token-exact).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from rlkit.environments.base import Environment, Episode, Reply, ToolStats, check_common
from rlkit.environments.parsers import resolve_parser
from rlkit.environments.toolbox import Toolbox, load_tools
from rlkit.registry import ENVIRONMENTS
from rlkit.sandbox import SandboxLimits, make_executor


def done_future(reply: Reply) -> Future:
    fut: Future = Future()
    fut.set_result(reply)
    return fut


class ToolEpisode(Episode):
    """One episode over a shared toolbox: counts its own calls against ``max_tool_calls``."""

    def __init__(self, toolbox: Toolbox, parser, max_tool_calls: int):
        self.toolbox, self.parser, self.calls_left = toolbox, parser, max_tool_calls

    def respond(self, text: str, turns_left: int) -> Future:
        parsed = self.parser(text)
        if not parsed.has_calls:
            return done_future(Reply(done=True))
        if turns_left <= 0:   # the model could not read the results: the tools are not run
            return done_future(Reply(done=True, finish="max_turns",
                                     stats=ToolStats(calls=len(parsed.items))))
        out: Future = Future()
        inner = self.toolbox.run(parsed, self.calls_left)
        self.calls_left -= len(parsed.items)

        def wrap(f: Future) -> None:
            messages, stats = f.result()
            out.set_result(Reply(messages=messages, stats=stats))
        inner.add_done_callback(wrap)
        return out


class ToolLoopOptions:
    """The options every tool-calling environment shares (validated once, with the fix in each message)."""

    def __init__(self, where: str, max_turns: int, max_tool_calls: int, max_total_tokens: int | None,
                 tool_timeout_s: float, parser: str, drift_check_episodes: int, max_token_drift: float):
        check_common(max_turns, max_total_tokens, drift_check_episodes, max_token_drift, where)
        if max_tool_calls < 0:
            raise ValueError(f"{where}: max_tool_calls must be >= 0, got {max_tool_calls}")
        if not tool_timeout_s or tool_timeout_s <= 0:
            raise ValueError(f"{where}: tool_timeout_s must be > 0 seconds, got {tool_timeout_s!r}")
        self.max_turns, self.max_tool_calls, self.max_total_tokens = max_turns, max_tool_calls, max_total_tokens
        self.tool_timeout_s, self.parser = float(tool_timeout_s), resolve_parser(parser)
        self.drift_check_episodes, self.max_token_drift = drift_check_episodes, max_token_drift


@ENVIRONMENTS.register("tools")
class ToolsEnvironment(Environment):
    """Tool-calling episodes: typed Python functions as tools, hermes-format calls, killable execution."""

    def __init__(self, tools: list[str], max_turns: int = 4, max_tool_calls: int = 8,
                 max_total_tokens: int | None = None, tool_timeout_s: float = 30.0, parser: str = "hermes",
                 executor: str = "process", workers: int = 2, memory_mb: int | None = 2048,
                 max_result_chars: int = 4000, drift_check_episodes: int = 16, max_token_drift: float = 0.5):
        opts = ToolLoopOptions("environment 'tools'", max_turns, max_tool_calls, max_total_tokens, tool_timeout_s,
                               parser, drift_check_episodes, max_token_drift)
        if executor not in ("process", "thread"):
            raise ValueError(f"environment 'tools': executor must be 'process' or 'thread', got {executor!r}")
        if workers < 1:
            raise ValueError(f"environment 'tools': workers must be >= 1, got {workers}")
        self.__dict__.update(vars(opts))
        limits = SandboxLimits(timeout_s=opts.tool_timeout_s, memory_mb=memory_mb)
        self.executor = make_executor(executor, limits, workers=workers, name="tools")
        self.toolbox = Toolbox(load_tools(tools), self.executor, max_result_chars=max_result_chars)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return self.toolbox.schemas()

    def episode(self, row: dict[str, Any]) -> Episode:
        return ToolEpisode(self.toolbox, self.parser, self.max_tool_calls)

    def close(self) -> None:
        self.executor.close()
