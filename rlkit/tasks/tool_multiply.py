"""Two-digit products with a ``multiply`` tool: the model cannot multiply, but it can learn to call the tool.

Problems ``a*b`` with ``a, b`` uniform in 10..99 (8,100 ordered pairs); the prompt is exactly ``"A*B="`` and the
answer is the product as a string::

    {"prompt": "37*52=", "answer": "1924", "a": 37, "b": 52, "data_source": "tool_multiply"}

The tool is :func:`multiply` in this module (``rlkit.tasks.tool_multiply:multiply``); its typed signature and
Google-style docstring give ``transformers.utils.get_json_schema`` its schema.

Imperfect demonstrations: train rows also get ``teacher_messages``, a conversation by a teacher that calls the
tool on exactly ``round(tool_rate * train)`` of the problems (chosen at random)::

    [user "37*52=", assistant '<tool_call>\\n{"name": "multiply", "arguments": {"a": 37, "b": 52}}\\n</tool_call>',
     tool (name multiply) "1924", assistant "1924"]

and on the rest answers directly with the product rounded to the nearest hundred (Python's ``round(a*b, -2)``,
ties to even: 2050 -> 2000), ``[user "37*52=", assistant "1900"]``: plausible, and right only when ``a*b`` is a
multiple of 100. SFT on ``teacher_messages`` teaches the call format and that calling is rare; RL against the exact
``answer`` then rewards calling the tool.

``write_splits`` writes ``train.jsonl`` and ``eval.jsonl`` with disjoint ``(a, b)`` pairs (eval rows get no
``teacher_messages``); everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlkit.tasks.arithmetic import write_jsonl

DATA_SOURCE = "tool_multiply"
LOW, HIGH = 10, 99
N_PAIRS = (HIGH - LOW + 1) ** 2


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def make_problem(a: int, b: int) -> dict[str, Any]:
    """The row of ``a*b=``."""
    return {"prompt": f"{a}*{b}=", "answer": str(a * b), "a": a, "b": b, "data_source": DATA_SOURCE}


def guess(a: int, b: int) -> str:
    """The teacher's direct answer: the product rounded to the nearest hundred (``37*52`` -> ``"1900"``)."""
    return str(round(a * b, -2))


def tool_call_text(a: int, b: int) -> str:
    """The assistant turn that calls the tool, in the Hermes / Qwen2.5 ``<tool_call>`` format."""
    return "<tool_call>\n" + json.dumps({"name": "multiply", "arguments": {"a": a, "b": b}}) + "\n</tool_call>"


def teacher_messages(a: int, b: int, call_tool: bool) -> list[dict[str, str]]:
    """The teacher's conversation: call the tool and copy its result, or guess directly."""
    user = {"role": "user", "content": f"{a}*{b}="}
    if not call_tool:
        return [user, {"role": "assistant", "content": guess(a, b)}]
    return [user, {"role": "assistant", "content": tool_call_text(a, b)},
            {"role": "tool", "name": "multiply", "content": str(multiply(a, b))},
            {"role": "assistant", "content": str(multiply(a, b))}]


def add_teacher_messages(rows: list[dict], tool_rate: float, seed: int) -> list[dict]:
    """Set ``teacher_messages`` on every row; exactly ``round(tool_rate * len(rows))`` of them call the tool."""
    if not 0.0 <= tool_rate <= 1.0:
        raise ValueError(f"tool_multiply tool_rate must be in [0, 1], got {tool_rate}; e.g. --tool-rate 0.25")
    calls = set(random.Random(seed + 7919).sample(range(len(rows)), round(tool_rate * len(rows))))
    for i, row in enumerate(rows):
        row["teacher_messages"] = teacher_messages(row["a"], row["b"], i in calls)
    return rows


def write_splits(out_dir: str | Path, *, train: int = 2000, eval: int = 200, seed: int = 0,
                 tool_rate: float = 0.25) -> dict[str, Path]:
    """Write ``train.jsonl`` (with ``teacher_messages``) and ``eval.jsonl`` under ``out_dir``; return the paths.

    The ``train + eval`` pairs are drawn without replacement, so no ``(a, b)`` pair is in both splits.
    """
    if train < 0 or eval < 0:
        raise ValueError(f"split sizes must be >= 0, got train={train}, eval={eval}")
    if train + eval > N_PAIRS:
        raise ValueError(f"tool_multiply has only {N_PAIRS} distinct problems (a, b in {LOW}..{HIGH}); "
                         f"train={train} + eval={eval} is too many, ask for fewer")
    pairs = [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1)]
    drawn = random.Random(seed).sample(pairs, train + eval)
    eval_rows = [make_problem(a, b) for a, b in drawn[:eval]]
    train_rows = add_teacher_messages([make_problem(a, b) for a, b in drawn[eval:]], tool_rate, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"train": write_jsonl(train_rows, out / "train.jsonl"),
            "eval": write_jsonl(eval_rows, out / "eval.jsonl")}
