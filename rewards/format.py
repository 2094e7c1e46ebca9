"""``format``: 1.0 when the completion matches a regular expression, else 0.0.

The default pattern asks for the reasoning format ``<think>...</think>`` followed by ``<answer>...</answer>``
and nothing else (``re.DOTALL``, so both parts may span lines). Set another one per recipe::

    reward:
      functions:
        - {name: format, weight: 0.1, kwargs: {pattern: '^\\d+$'}}

To check something else, copy this file, rename the function and its registered name, and point a recipe
at ``path/to/my_file.py:my_function``. Returns plain floats (a format check says nothing about success).
"""

from __future__ import annotations

import re
from typing import Any

from rlkit.registry import REWARDS
from rlkit.reward_calls import completion_text

THINK_ANSWER = r"^<think>.*?</think>\s*<answer>.*?</answer>$"


@REWARDS.register("format")
def format_reward(completions: list[str] | list[list[dict]], pattern: str = THINK_ANSWER, **kwargs: Any) -> list[float]:
    """1.0 per completion that ``re.match`` es ``pattern`` (DOTALL), else 0.0."""
    regex = re.compile(pattern, re.DOTALL)
    return [1.0 if regex.match(completion_text(c)) else 0.0 for c in completions]
