"""GSM8K reward: the completion's final number must equal the number after ``####`` in the reference solution.

GSM8K (``openai/gsm8k``, config ``main``) stores the full worked solution in its ``answer`` column, ending in
``#### 72``. This reward extracts that number as the gold answer and compares it with the completion's answer,
read from ``\\boxed{...}`` if present, else the last number in the text, using math-verify's numeric
comparison. Returns ``{"reward": 1.0/0.0, "success": bool}``. Copy and edit it for your own dataset (rename the
registered name of your copy, or drop the decorator and load it as ``path/file.py:gsm8k_reward``).
"""

from __future__ import annotations

import re

from math_verify import parse, verify

from rlkit.registry import REWARDS
from rlkit.reward_calls import completion_text

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_gold(solution: str) -> str:
    """'... #### 1,234' -> '1234'."""
    return solution.split("####")[-1].strip().replace(",", "")


def extract_prediction(completion: str) -> str | None:
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", completion)
    if boxed:
        return boxed[-1].replace(",", "")
    numbers = _NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else None


@REWARDS.register("gsm8k")
def gsm8k_reward(completions: list[str] | list[list[dict]], answer: list[str], **kwargs) -> list[dict]:
    """1.0 when the completion's final number equals the GSM8K reference answer."""
    out = []
    for completion, solution in zip(map(completion_text, completions), answer):
        pred = extract_prediction(completion)
        ok = pred is not None and verify(parse(f"${extract_gold(solution)}$", parsing_timeout=None),
                                         parse(f"${pred}$", parsing_timeout=None), timeout_seconds=None)
        out.append({"reward": 1.0 if ok else 0.0, "success": bool(ok)})
    return out
