"""``exact_match``: 1.0 when the completion is exactly the expected answer string, else 0.0.

Checks: the completion is cut at the first special-token text (``<|...|>``, ``</s>``), stripped, cut at the
first newline and stripped again; the rest must equal ``str(answer).strip()``. Deliberately strict -- no
"first integer found" extraction -- so ``"47 because..."`` or ``"047"`` score 0 on the arithmetic task
(prompt ``"12+35="``, answer ``"47"``). Returns ``{"reward": r, "success": r == 1.0}`` per completion.

To adapt it, copy this file, rename the function and its registered name (or drop the decorator), and use
``reward.functions: [{name: path/to/my_file.py:my_function}]`` in a recipe. Any function with a
``completions`` parameter works: it receives the completions and the dataset columns it names (here
``answer``) as lists of equal length and returns one float / None / dict per completion.
"""

from __future__ import annotations

import re
from typing import Any

from rlkit.registry import REWARDS
from rlkit.reward_calls import completion_text

SPECIAL_TOKEN_TEXT = re.compile(r"<\|[^|<>]*\|>|</s>")


def normalize(completion: str) -> str:
    """The part of a completion that is compared: before any special token, first line, stripped."""
    text = SPECIAL_TOKEN_TEXT.split(completion, maxsplit=1)[0].strip()
    return text.split("\n", 1)[0].strip()


@REWARDS.register("exact_match")
def exact_match(completions: list[str] | list[list[dict]], answer: list[Any], **kwargs: Any) -> list[dict[str, Any]]:
    """1.0 if ``normalize(completion) == str(answer).strip()``, else 0.0; success = reward is 1.0."""
    results = []
    for completion, gold in zip(map(completion_text, completions), answer, strict=True):
        r = 1.0 if normalize(completion) == str(gold).strip() else 0.0
        results.append({"reward": r, "success": r == 1.0})
    return results
