"""What one multi-turn episode is while it runs and after: its token sequence, its record and the batch sums.

:class:`~rlkit.environments.runner.EpisodeRunner` (the loop) builds a :class:`LiveEpisode` per episode, appends
model turns and inserted messages to it, and hands back each finished episode's :class:`EpisodeRecord` on its
``Completion``; :class:`EpisodeMetrics` sums a batch of them for the ``environment/*`` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlkit.environments.base import Episode, ToolStats
from rlkit.rollout import _mix32

STOP, LENGTH, MAX_TURNS = "stop", "length", "max_turns"


def turn_seed(seed: int, turn: int) -> int:
    """Seed of turn ``turn`` of the episode whose completion seed is ``seed`` (turn 0 keeps ``seed``)."""
    return seed if turn == 0 else _mix32(seed ^ (turn * 0x9E3779B1 + 0x7F4A7C15)) & 0x7FFFFFFF


@dataclass
class EpisodeRecord:
    """What an episode was, for the canary, the rewards and the samples table."""

    messages: list[dict[str, Any]]    # opening messages, then every assistant turn and inserted message
    prompt_text: str                  # the rendered prompt
    turns: int                        # model turns
    stats: ToolStats
    finish: str                       # STOP | LENGTH | MAX_TURNS
    segments: list[tuple[bool, int]]  # runs of (is_model_token, count) after the prompt
    env_reward: float | None = None

    @property
    def completion_messages(self) -> list[dict[str, Any]]:
        """Every message after the opening ones (the model's turns and what was inserted between them)."""
        first = next((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), len(self.messages))
        return self.messages[first:]

    def transcript(self) -> str:
        """The episode after its opening messages, one line per turn, inserted messages marked ``[tool name]``."""
        lines = []
        for m in self.completion_messages:
            tag = "[model]" if m["role"] == "assistant" else f"[{m['role']} {m.get('name', '')}]".replace(" ]", "]")
            lines.append(f"{tag} {m.get('content', '')}")
        return "\n".join(lines) + ("" if self.finish == STOP else f"\n[{self.finish}]")

    @property
    def answer(self) -> str:
        """The text of the last model turn (what the rewards score)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


@dataclass
class LiveEpisode:
    """An episode being run: its token sequence so far (the runner appends turns and inserted messages)."""

    episode: Episode
    seed: int
    prompt_ids: list[int]
    record: EpisodeRecord
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)   # policy version per token (-1: inserted or unknown)
    stop_text: str = ""          # text of the token that ended the last model turn (e.g. "<|im_end|>")

    def append(self, ids: list[int], logprobs: list[float] | None, model: bool,
               versions: list[int] | None = None) -> None:
        self.tokens += ids
        self.versions += versions if versions is not None else [-1] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.mask += [model] * len(ids)
        if ids:
            segs = self.record.segments
            if segs and segs[-1][0] == model:
                segs[-1] = (model, segs[-1][1] + len(ids))
            else:
                segs.append((model, len(ids)))


@dataclass
class EpisodeMetrics:
    """Sums over one batch of episodes (the collector turns them into ``environment/*`` means)."""

    episodes: int = 0
    turns: int = 0
    stats: ToolStats = field(default_factory=ToolStats)
    model_tokens: int = 0
    env_tokens: int = 0
    generate_s: float = 0.0
    environment_s: float = 0.0


def opening_messages(raw_prompt: Any, extra: str | None) -> list[dict[str, Any]]:
    """The dataset prompt as chat messages, with ``reset``'s text appended to the last user message."""
    if isinstance(raw_prompt, str):
        messages = [{"role": "user", "content": raw_prompt}]
    elif isinstance(raw_prompt, list) and all(isinstance(m, dict) and "role" in m for m in raw_prompt):
        messages = [dict(m) for m in raw_prompt]
    else:
        raise ValueError(f"environment prompt {raw_prompt!r:.80} is neither a string nor a list of chat messages")
    if extra:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise ValueError("the environment's reset returned text to append to the last user message, but the "
                             "prompt has no user message")
        last = messages[users[-1]]
        last["content"] = f"{last.get('content') or ''}\n\n{extra}" if last.get("content") else extra
    return messages
