"""``math_verify``: 1.0 when the completion's final answer is mathematically equal to the gold answer.

Uses the ``math-verify`` package: the gold answer and the completion are parsed (LaTeX and plain
expressions; ``\\boxed{}`` preferred) and compared symbolically, so ``"0.5"`` matches ``"\\frac{1}{2}"``.
A gold answer without math delimiters is wrapped as ``$answer$`` so bare numbers and LaTeX parse. A gold
answer that cannot be parsed gives ``None`` (sample unscorable), a completion without a parsable answer 0.0.
Returns ``{"reward": r, "success": r == 1.0}``.

math-verify's own timeouts use SIGALRM, which raises outside the main thread, and rlkit runs rewards in
worker threads; they are disabled (``parsing_timeout=None``, ``timeout_seconds=None``) and rlkit's
``reward.timeout_s`` covers hangs instead.

To adapt it (e.g. a different extraction config), copy this file, rename the function and its registered
name, and point a recipe at ``path/to/my_file.py:my_function``.
"""

from __future__ import annotations

from typing import Any

from math_verify import parse, verify

from rlkit.registry import REWARDS
from rlkit.reward_calls import completion_text

DELIMITERS = ("$", "\\(", "\\[", "\\boxed")


def parse_gold(answer: Any) -> list:
    """Parse a gold answer, wrapping it in ``$...$`` unless it already has math delimiters."""
    text = str(answer).strip()
    if not any(d in text for d in DELIMITERS):
        text = f"${text}$"
    return parse(text, parsing_timeout=None)


def score(completion: str, gold: Any) -> float | None:
    """1.0 / 0.0 for one completion, None if the gold answer does not parse."""
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return None
    pred = parse(completion, parsing_timeout=None)
    return 1.0 if pred and verify(gold_parsed, pred, timeout_seconds=None) else 0.0


@REWARDS.register("math_verify")
def math_verify_reward(completions: list[str] | list[list[dict]], answer: list[Any], **kwargs: Any) -> list[dict[str, Any] | None]:
    """Symbolic answer check per completion (see the module docstring)."""
    results: list[dict[str, Any] | None] = []
    for completion, gold in zip(map(completion_text, completions), answer, strict=True):
        r = score(completion, gold)
        results.append(None if r is None else {"reward": r, "success": r == 1.0})
    return results
