"""The environment plug-in kind: what happens between model turns (DESIGN.md "Plug-in kinds").

An :class:`Environment` is built once per run from the recipe's ``environment:`` section. For every episode the
runner (:mod:`rlkit.environments.runner`) asks it for an :class:`Episode` (one per sample, so episodes never share
state) and drives the loop

    opening messages (dataset row, ``Episode.reset``) -> [model turn -> ``Episode.respond``]* -> ``Episode.reward``

while it owns the tokens: the prompt is rendered once, model tokens come from the engine with their sampling
log-probs, and what the environment answers is rendered with the chat template and *appended*; nothing already
in the sequence is decoded and re-tokenized (:mod:`rlkit.environments.render`).

``multi_turn = False`` marks the single-turn environment, for which the rollout phase is exactly what it was
before environments existed (one ``engine.generate`` per completion).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rlkit.plugin_api import Plugin


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: ``name(**arguments)``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParseResult:
    """What a tool-call parser found in one model turn, in the order the model wrote it.

    ``items``: a :class:`ToolCall` per well-formed call and an error message (str) per malformed one (bad JSON,
    no name, arguments not an object). A turn without items is a final answer."""

    items: tuple[ToolCall | str, ...] = ()

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(x for x in self.items if isinstance(x, ToolCall))

    @property
    def errors(self) -> tuple[str, ...]:
        return tuple(x for x in self.items if isinstance(x, str))

    @property
    def has_calls(self) -> bool:
        return bool(self.items)


@dataclass
class ToolStats:
    """Counts of one episode (summed into the step's ``environment/*`` metrics)."""

    calls: int = 0          # tool calls the model made (well-formed or not)
    errors: int = 0         # calls that failed: malformed, unknown tool, bad arguments, raised, crashed, over limit
    timeouts: int = 0       # calls killed at the tool timeout
    seconds: float = 0.0    # wall time of the tool calls (summed over calls)

    def add(self, other: "ToolStats") -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.timeouts += other.timeouts
        self.seconds += other.seconds


@dataclass
class Reply:
    """The environment's answer to one model turn: messages to append (tool results ...), or done."""

    messages: list[dict[str, Any]] = field(default_factory=list)   # chat messages, e.g. {"role": "tool", ...}
    done: bool = False                                               # True: the episode ends after this turn
    stats: ToolStats = field(default_factory=ToolStats)
    finish: str = "stop"      # why a done episode ended: "stop" (answered) or "max_turns" (asked for a tool too late)


class Episode:
    """One episode's state. ``respond`` returns a Future so that tools run while other episodes generate."""

    def reset(self) -> str | None:
        """Text appended to the last user message (TRL's ``reset(**row)``), or None."""
        return None

    def respond(self, text: str, turns_left: int) -> Future:
        """Future[Reply] for the model turn ``text`` (its decoded content, without the stop token).

        ``turns_left``: model turns still allowed after this one; with 0 the episode ends whatever the turn holds
        (tools it asked for are not run, as the model could not read their results)."""
        raise NotImplementedError

    def reward(self) -> float | None:
        """The episode's own reward (TRL ``get_reward``), scored once when it has finished; None = none."""
        return None

    def close(self) -> None:
        pass


class Environment(Plugin):
    """Factory of episodes plus the options every multi-turn environment shares.

    ``multi_turn``: False only for ``single_turn`` (the rollout phase then never calls ``episode``).
    ``reward_name``: name of the episode's own reward component (None: episodes carry no reward of their own).
    """

    multi_turn: bool = True
    reward_name: str | None = None
    max_turns: int = 1
    max_total_tokens: int | None = None
    drift_check_episodes: int = 16
    max_token_drift: float = 0.5

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """JSON schemas rendered into the prompt by the chat template (``apply_chat_template(tools=...)``)."""
        return None

    def episode(self, row: dict[str, Any]) -> Episode:
        """A fresh episode for dataset ``row`` (every column, the prompt column included)."""
        raise NotImplementedError

    def max_model_tokens(self, max_new_tokens: int) -> int:
        """Upper bound on an episode's *model* tokens (what aggregations such as Dr. GRPO's normalise by):
        ``max_turns`` turns of at most ``max_new_tokens`` each, and never more than the episode's token budget."""
        bound = max_new_tokens * self.max_turns
        return min(bound, self.max_total_tokens) if self.max_total_tokens else bound

    def close(self) -> None:
        pass


def check_common(max_turns: int, max_total_tokens: int | None, drift_check_episodes: int,
                 max_token_drift: float, where: str) -> None:
    """The shared option checks, with the fix in each message."""
    if not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"{where}: max_turns must be an integer >= 1 (model turns per episode), got {max_turns!r}")
    if max_total_tokens is not None and (not isinstance(max_total_tokens, int) or max_total_tokens < 2):
        raise ValueError(f"{where}: max_total_tokens must be null or an integer >= 2 (prompt + every turn's "
                         f"tokens), got {max_total_tokens!r}")
    if drift_check_episodes < 0:
        raise ValueError(f"{where}: drift_check_episodes must be >= 0 (0 = no tokenization canary), got "
                         f"{drift_check_episodes}")
    if not 0.0 <= max_token_drift <= 1.0:
        raise ValueError(f"{where}: max_token_drift must be a share in [0, 1] (1 = never stop), got {max_token_drift}")
