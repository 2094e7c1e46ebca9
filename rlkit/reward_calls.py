"""What a batch (TRL-style) reward function receives besides the completions, exactly as TRL's ``GRPOTrainer``
passes it (trl 1.16, ``_calculate_rewards``), so TRL's own rewards and users' TRL rewards run unchanged.

* **Conversational data.** When the prompt column holds chat messages (a list of ``{"role", "content"}``),
  ``prompts`` are those message lists and every completion is a message list, ``[{"role": "assistant",
  "content": text}]``; with plain-text prompts both are strings. (For multi-turn episodes the completion is the
  episode's messages after the prompt: assistant turns with their tool calls, and the tool results.)
* ``completion_ids``: the generated token ids (already passed before).
* ``trainer_state``: a :class:`RewardState` with TRL's ``TrainerState`` fields rewards read for schedules
  (``global_step``, ``max_steps``, ``epoch``); ``global_step`` counts the optimizer steps already taken (0 while
  the first step's completions are scored), as in TRL.
* ``log_metric(name, value)``: a scalar averaged over the step, logged as ``reward/<function>/<name>``.
* ``log_extra(column, values)``: N values per call, shown as extra columns of the logged sample rows
  (``samples.jsonl`` and the console table).

rlkit's built-in rewards take both forms (:func:`completion_text`).

They reach only functions that declare them (or ``**kwargs``). In a reward worker process (``reward.executor:
process``) the two callbacks record into lists that come back with the result (:func:`call_logged`), so they
work there too. ``async def`` reward functions (and objects with an ``async def __call__``) run in a thread with
their own event loop, all async functions of one scoring call concurrently.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

CALLBACKS = ("log_metric", "log_extra")
__sandbox_wrapper__ = True      # call_logged's frame is left out of a failing reward's traceback


@dataclass(frozen=True)
class RewardState:
    """The training progress a reward sees as ``trainer_state`` (TRL's ``TrainerState`` names)."""

    global_step: int = 0          # optimizer steps done before these completions (0 for the first), as in TRL
    max_steps: int = 0            # train.steps
    epoch: float = 0.0            # passes over the prompt data before these prompts


@dataclass
class RewardLog:
    """What one call logged through ``log_metric`` / ``log_extra`` (picklable: it crosses process boundaries)."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    extras: dict[str, list[Any]] = field(default_factory=dict)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(str(name), []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extras.setdefault(str(column), []).extend(list(values))

    def callbacks(self, wanted: set[str]) -> dict[str, Callable[..., None]]:
        return {name: getattr(self, name) for name in CALLBACKS if name in wanted}

    def merge(self, other: "RewardLog") -> None:
        for k, v in other.metrics.items():
            self.metrics.setdefault(k, []).extend(v)
        for k, v in other.extras.items():
            self.extras.setdefault(k, []).extend(v)


def is_conversational(prompt: Any) -> bool:
    """TRL's test: a list of messages (dicts with a role)."""
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "role" in m for m in prompt)


def as_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """A completion in either form -> its text: the string itself, or the last assistant message's content (what
    TRL's rewards read as ``completion[0]["content"]`` for one-turn completions). rlkit's built-in rewards use it,
    so they score plain and conversational data alike."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role", "assistant") == "assistant":
            return str(message.get("content") or "")
    return ""


def is_async(fn: Callable[..., Any]) -> bool:
    """``async def`` functions, partials of them and objects with an ``async def __call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def resolve_awaitable(value: Any) -> Any:
    """The result of a call: awaited in a new event loop (this thread's) when the function was async."""
    return asyncio.run(value) if inspect.isawaitable(value) else value


def call_logged(fn: Callable[..., Any], kwargs: dict[str, Any], callbacks: list[str]) -> tuple[Any, RewardLog]:
    """In a reward worker process (``ProcessExecutor.call(("rlkit.reward_calls:call_logged", ref), ...)``): call
    ``fn`` with ``kwargs`` plus recording ``callbacks``, and return (result, what it logged)."""
    log = RewardLog()
    result = resolve_awaitable(fn(**kwargs, **log.callbacks(set(callbacks))))
    return result, log
