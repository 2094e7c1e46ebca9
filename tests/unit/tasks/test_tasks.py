"""rlkit.tasks: synthetic arithmetic problems, splits and the task registry."""

import json
import random
import re

import pytest

from rlkit.tasks import TASKS, write_task
from rlkit.tasks.arithmetic import capacity, generate, make_problem, write_splits

PROMPT = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_are_correct_and_difficulty_is_digits():
    rows = generate(500, seed=3, difficulties=(1, 2, 3, 4), ops="+-*")
    assert {r["difficulty"] for r in rows} == {1, 2, 3, 4} and {r["data_source"] for r in rows} == {"arithmetic"}
    for row in rows:
        a, op, b = PROMPT.match(row["prompt"]).groups()
        assert row["answer"] == str(eval(row["prompt"][:-1]))     # "12+35=" -> eval("12+35")
        assert int(row["answer"]) >= 0                             # "-" orders its operands
        assert len(a) == len(b) == row["difficulty"]
    assert {PROMPT.match(r["prompt"]).group(2) for r in rows} == {"+", "-", "*"}


def test_generate_is_deterministic():
    assert generate(50, seed=1) == generate(50, seed=1)
    assert generate(50, seed=1) != generate(50, seed=2)
    assert make_problem(random.Random(0), 2) == make_problem(random.Random(0), 2)


def test_write_splits_held_out_and_deterministic(tmp_path):
    paths = write_splits(tmp_path / "a", train=300, eval=50, seed=0, difficulties=(1, 2))
    again = write_splits(tmp_path / "b", train=300, eval=50, seed=0, difficulties=(1, 2))
    assert set(paths) == {"train", "eval"}
    assert paths["train"].read_text() == again["train"].read_text()
    train, evals = _read(paths["train"]), _read(paths["eval"])
    assert len(train) == 300 and len(evals) == 50
    train_prompts, eval_prompts = [r["prompt"] for r in train], [r["prompt"] for r in evals]
    assert len(set(train_prompts)) == 300 and len(set(eval_prompts)) == 50     # deduplicated
    assert not set(train_prompts) & set(eval_prompts)                           # held out


def test_too_many_problems_is_a_clear_error(tmp_path):
    # difficulty 1 with "+": 10*10 = 100 distinct prompts
    assert capacity((1,), "+") == 100
    with pytest.raises(ValueError, match="only 100 distinct"):
        write_splits(tmp_path, train=90, eval=20, difficulties=(1,), ops="+")


@pytest.mark.parametrize("kw", [{"difficulties": (5,)}, {"ops": "/"}, {"difficulties": ()}])
def test_bad_options(kw):
    with pytest.raises(ValueError, match="invalid"):
        generate(3, seed=0, **kw)


def test_task_registry(tmp_path):
    assert "arithmetic" in TASKS
    paths = write_task("arithmetic", tmp_path, train=10, eval=5)
    assert paths["train"].exists() and paths["eval"].exists()
    with pytest.raises(ValueError, match="unknown task 'nope'.*arithmetic"):
        write_task("nope", tmp_path)


def test_second_operand_width_and_capacity(tmp_path):
    from rlkit.tasks.arithmetic import capacity, generate
    rows = generate(200, seed=1, difficulties=(2,), ops="+", b_digits=1)
    for r in rows:
        a, b = r["prompt"].rstrip("=").split("+")
        assert len(a) == 2 and len(b) == 1 and int(r["answer"]) == int(a) + int(b)
    assert capacity((2,), "+", 1) == 90 * 10          # 10..99 x 0..9
    assert capacity((2,), "+-", None) == 90 * 90 + 90 * 91 // 2


def test_teacher_forgets_ones_carry():
    from rlkit.tasks.arithmetic import add_teacher_answers, forgetful_answer
    assert forgetful_answer(47, "+", 8) == "45"        # 7+8=15: the carry into the tens is lost
    assert forgetful_answer(59, "+", 13) == "62"
    assert forgetful_answer(12, "+", 35) == "47"       # no carry: correct
    assert forgetful_answer(95, "+", 7) == "92"
    assert forgetful_answer(40, "-", 13) == "27"       # other operators unaffected
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 100) for b in range(10)]
    add_teacher_answers(rows, 1.0, seed=0)
    wrong = [r for r in rows if r["teacher_answer"] != r["answer"]]
    assert len(wrong) == 90 * 45 // 10                 # ones digits a%10+b >= 10: 45 of 100 pairs per tens digit
    add_teacher_answers(rows, 0.0, seed=0)
    assert all(r["teacher_answer"] == r["answer"] for r in rows)


# --- tool_multiply -----------------------------------------------------------------------------------------------

def test_tool_multiply_splits_and_answers(tmp_path):
    from rlkit.tasks import tool_multiply
    paths = write_task("tool_multiply", tmp_path / "a", train=400, eval=100, seed=0)
    again = tool_multiply.write_splits(tmp_path / "b", train=400, eval=100, seed=0)
    assert paths["train"].read_text() == again["train"].read_text()
    train, evals = _read(paths["train"]), _read(paths["eval"])
    assert len(train) == 400 and len(evals) == 100
    pairs = lambda rows: {(r["a"], r["b"]) for r in rows}                          # noqa: E731
    assert len(pairs(train)) == 400 and len(pairs(evals)) == 100 and not pairs(train) & pairs(evals)
    for row in train + evals:
        assert 10 <= row["a"] <= 99 and 10 <= row["b"] <= 99
        assert row["prompt"] == f"{row['a']}*{row['b']}=" and row["answer"] == str(row["a"] * row["b"])
    assert all("teacher_messages" not in r for r in evals)
    with pytest.raises(ValueError, match="only 8100 distinct"):
        tool_multiply.write_splits(tmp_path / "c", train=8000, eval=101)
    with pytest.raises(ValueError, match="tool_rate must be in"):
        tool_multiply.write_splits(tmp_path / "c", train=10, eval=1, tool_rate=1.5)
    with pytest.raises(ValueError, match="no option difficulties"):
        write_task("tool_multiply", tmp_path / "c", difficulties=(1,))


def test_tool_multiply_teacher(tmp_path):
    import json as _json
    rows = _read(write_task("tool_multiply", tmp_path, train=400, eval=10, seed=1, tool_rate=0.25)["train"])
    calls = [r for r in rows if len(r["teacher_messages"]) == 4]
    assert len(calls) == 100                                                       # exactly round(0.25 * 400)
    for r in calls:
        user, call, tool, final = r["teacher_messages"]
        assert user == {"role": "user", "content": r["prompt"]}
        assert call["role"] == "assistant" and call["content"] == (
            "<tool_call>\n" + _json.dumps({"name": "multiply", "arguments": {"a": r["a"], "b": r["b"]}})
            + "\n</tool_call>")
        assert tool == {"role": "tool", "name": "multiply", "content": r["answer"]}
        assert final == {"role": "assistant", "content": r["answer"]}
    for r in rows:
        if len(r["teacher_messages"]) == 2:                                         # 37*52=1924 -> "1900"
            assert r["teacher_messages"][1] == {"role": "assistant", "content": str(round(r["a"] * r["b"], -2))}
    from rlkit.tasks.tool_multiply import guess
    assert (guess(37, 52), guess(10, 10), guess(41, 50)) == ("1900", "100", "2000")  # 2050: ties to even


def test_multiply_tool_schema():
    from transformers.utils import get_json_schema
    from rlkit.tasks.tool_multiply import multiply
    assert multiply(37, 52) == 1924
    fn = get_json_schema(multiply)["function"]
    assert fn["name"] == "multiply" and fn["parameters"]["required"] == ["a", "b"]
    assert {k: v["type"] for k, v in fn["parameters"]["properties"].items()} == {"a": "integer", "b": "integer"}
