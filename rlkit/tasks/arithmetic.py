"""Synthetic arithmetic: prompts like ``"12+35="`` with an exact integer answer and graded difficulty.

Difficulty ``d`` (1..4) is the number of digits of the first operand (``d = 1`` uses 0..9); the second operand
has ``b_digits`` digits (default: the same ``d``). Operators come from ``"+-*"``; ``-`` orders its operands so
the result is never negative. The prompt is exactly ``"A<op>B="`` and the expected completion is the answer
digits followed by EOS -- short enough for the quickstart to train a tiny model on 2 CPU cores in minutes::

    {"prompt": "12+35=", "answer": "47", "difficulty": 2, "data_source": "arithmetic"}

Imperfect demonstrations: with ``teacher_error > 0`` the train rows also get a ``teacher_answer`` column, the
answer of a teacher that forgets the carry out of the ones column (``47+8=`` -> ``45``, ``59+13=`` -> ``62``) on
that fraction of the ``+`` problems that have one; every other row gets the true answer (eval rows get no
``teacher_answer``). An SFT warm start on ``teacher_answer`` imitates the teacher's systematic mistake; RL
against the exact ``answer`` can then undo it -- the "distil from an imperfect model, then RL with a verifier"
situation, and the quickstart's set-up.

``write_splits`` writes ``train.jsonl`` and a held-out ``eval.jsonl``: prompts are unique within each split
and no eval prompt appears in train. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

DATA_SOURCE = "arithmetic"
OPS = "+-*"
DIFFICULTIES = (1, 2, 3, 4)


def _check(difficulties: Iterable[int], ops: str, b_digits: int | None = None) -> tuple[tuple[int, ...], str]:
    difficulties = tuple(difficulties)
    bad = [d for d in difficulties if d not in DIFFICULTIES]
    if not difficulties or bad:
        raise ValueError(f"arithmetic difficulties {difficulties!r} invalid: use digits per operand in "
                         f"{DIFFICULTIES}, e.g. difficulties=(1, 2)")
    if b_digits is not None and b_digits not in DIFFICULTIES:
        raise ValueError(f"arithmetic b_digits {b_digits!r} invalid: use one of {DIFFICULTIES} (or None)")
    bad_ops = sorted(set(ops) - set(OPS))
    if not ops or bad_ops:
        raise ValueError(f"arithmetic ops {ops!r} invalid: use a non-empty subset of {OPS!r}, e.g. ops='+-'")
    return difficulties, ops


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1)


def make_problem(rng: random.Random, difficulty: int, ops: str = "+-", b_digits: int | None = None) -> dict[str, Any]:
    """One problem: first operand with ``difficulty`` digits, second with ``b_digits`` (default the same)."""
    _check((difficulty,), ops, b_digits)
    a, b = _operand(rng, difficulty), _operand(rng, b_digits or difficulty)
    op = rng.choice(ops)
    if op == "-" and a < b:
        a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": f"{a}{op}{b}=", "answer": str(result), "difficulty": difficulty, "data_source": DATA_SOURCE}


def generate(n: int, *, seed: int = 0, difficulties: Iterable[int] = (1, 2), ops: str = "+-",
             b_digits: int | None = None) -> list[dict]:
    """``n`` problems (duplicates possible), difficulty drawn uniformly from ``difficulties``."""
    difficulties, ops = _check(difficulties, ops, b_digits)
    rng = random.Random(seed)
    return [make_problem(rng, rng.choice(difficulties), ops, b_digits) for _ in range(n)]


def _count(digits: int) -> int:
    return 10 if digits == 1 else 9 * 10 ** (digits - 1)


def capacity(difficulties: Iterable[int], ops: str, b_digits: int | None = None) -> int:
    """Number of distinct prompts that ``difficulties`` x ``ops`` (x ``b_digits``) can produce."""
    total = 0
    for d in set(difficulties):
        ka, kb = _count(d), _count(b_digits or d)
        minus = ka * (ka + 1) // 2 if (b_digits or d) == d else ka * kb  # a-b and b-a coincide when widths match
        total += sum({"+": ka * kb, "*": ka * kb, "-": minus}[op] for op in set(ops))
    return total


def _unique(rng: random.Random, n: int, difficulties: tuple[int, ...], ops: str, b_digits: int | None,
            exclude: set[str]) -> list[dict]:
    """``n`` problems with prompts not in ``exclude`` (which is extended); rejection sampling."""
    rows: list[dict] = []
    misses, budget = 0, 1000 + 100 * n
    while len(rows) < n:
        row = make_problem(rng, rng.choice(difficulties), ops, b_digits)
        if row["prompt"] in exclude:
            misses += 1
            if misses > budget:
                raise ValueError(f"could not draw {n} distinct new arithmetic problems: difficulties "
                                 f"{difficulties} with ops {ops!r} allow only "
                                 f"{capacity(difficulties, ops, b_digits)} distinct prompts in total "
                                 f"(train + eval); ask for fewer or add difficulties")
            continue
        exclude.add(row["prompt"])
        rows.append(row)
    return rows


def forgetful_answer(a: int, op: str, b: int) -> str:
    """The answer of a teacher that forgets the carry out of the ones column: ``47+8`` -> ``45``.

    Only ``+`` is affected; other operators return the true answer.
    """
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    if op == "+" and a % 10 + b % 10 >= 10:
        result -= 10
    return str(result)


def parse_prompt(prompt: str) -> tuple[int, str, int]:
    body = prompt.rstrip("=")
    for i, ch in enumerate(body[1:], start=1):
        if ch in OPS:
            return int(body[:i]), ch, int(body[i + 1:])
    raise ValueError(f"not an arithmetic prompt: {prompt!r}")


def add_teacher_answers(rows: list[dict], error_rate: float, seed: int) -> list[dict]:
    """Set ``teacher_answer``: the carry-forgetting answer on ``error_rate`` of the rows where it differs."""
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"teacher_error must be in [0, 1], got {error_rate}")
    rng = random.Random(seed + 7919)
    for row in rows:
        wrong = forgetful_answer(*parse_prompt(row["prompt"]))
        row["teacher_answer"] = wrong if (wrong != row["answer"] and rng.random() < error_rate) else row["answer"]
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_splits(out_dir: str | Path, *, train: int = 2000, eval: int = 200, seed: int = 0,
                 difficulties: Iterable[int] = (1, 2), ops: str = "+-", b_digits: int | None = None,
                 teacher_error: float = 0.0) -> dict[str, Path]:
    """Write ``train.jsonl`` and held-out ``eval.jsonl`` under ``out_dir``; return ``{split: path}``.

    Eval is drawn first, then train from the remaining prompts, so the two never share a prompt.
    """
    difficulties, ops = _check(difficulties, ops, b_digits)
    if train < 0 or eval < 0:
        raise ValueError(f"split sizes must be >= 0, got train={train}, eval={eval}")
    rng = random.Random(seed)
    seen: set[str] = set()
    eval_rows = _unique(rng, eval, difficulties, ops, b_digits, seen)
    train_rows = _unique(rng, train, difficulties, ops, b_digits, seen)
    if teacher_error > 0:
        add_teacher_answers(train_rows, teacher_error, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"train": write_jsonl(train_rows, out / "train.jsonl"),
            "eval": write_jsonl(eval_rows, out / "eval.jsonl")}
