"""rlkit.sandbox (killable worker processes with limits) and the built-in python tool.

The helpers below are module-level so a worker can import them (``tests.unit.sandbox.test_sandbox:fn`` or pickled by
reference; this module must not import torch, or every worker would). No timing assertions: timeouts are
generous, and the tests check outcomes (which exception, whether a process is still alive).
"""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlkit.sandbox import (ProcessExecutor, SandboxCallError, SandboxCrash, SandboxError, SandboxLimits,
                           SandboxTimeout, ThreadExecutor, make_executor)

HERE = "tests.unit.sandbox.test_sandbox"


def add(a, b):
    return {"sum": a + b, "pid": os.getpid()}


async def async_double(x):
    await asyncio.sleep(0)
    return 2 * x


class Unpicklable(Exception):
    def __init__(self, a, b):           # pickling needs __init__(*args): this one cannot be rebuilt
        super().__init__(f"{a}/{b}")


def fails():
    raise Unpicklable("left", "right")


def sleeper(seconds=60.0):
    time.sleep(seconds)


def exits(code):
    os._exit(code)


def allocate(mb):
    return len(bytearray(mb << 20))


def write_and_list(name):
    Path(name).write_text("x")
    return os.getcwd(), sorted(os.listdir("."))


def spawn_and_hang(pid_file):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(120)


def spawn_and_return(pid_file):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(pid_file).write_text(str(child.pid))
    return child.pid


def returns_lambda():
    return lambda: 0


def big(n):
    return b"x" * n


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (from /proc; os.kill(pid, 0) also sees zombies)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@pytest.fixture
def executor():
    ex = ProcessExecutor(SandboxLimits(timeout_s=20.0), workers=2, name="test")
    yield ex
    ex.close()


def test_round_trip_string_reference_and_callable(executor):
    assert executor.call(f"{HERE}:add", {"a": 2, "b": 3})["sum"] == 5
    out = executor.call(add, {"a": [1], "b": [2]})
    assert out["sum"] == [1, 2] and out["pid"] != os.getpid()
    assert executor.network_isolated in (True, False) and executor.network_note


def test_async_function(executor):
    assert executor.call(async_double, {"x": 21}) == 42


def test_raising_function_gives_call_error_with_type_and_message(executor):
    with pytest.raises(SandboxCallError, match=r"^Unpicklable: left/right \(at test_sandbox.py:\d+ in fails\)$") as e:
        executor.call(fails, {})
    assert e.value.exc_type == "Unpicklable" and "raise Unpicklable" in e.value.remote_traceback
    with pytest.raises(SandboxCallError, match="cannot be pickled"):
        executor.call(returns_lambda, {})
    with pytest.raises(SandboxCallError, match="cannot send"):
        executor.call(lambda: 0, {})
    with pytest.raises(SandboxCallError, match="cannot load the function.*no attribute 'nope'"):
        executor.call(f"{HERE}:nope", {})
    with pytest.raises(SandboxCallError, match=r"over max_output_bytes=1048576"):
        executor.call(big, {"n": 2 << 20})
    assert executor.call(add, {"a": 1, "b": 1})["sum"] == 2        # the worker survived all of that


def test_timeout_kills_worker_and_next_call_uses_a_fresh_one():
    with ProcessExecutor(SandboxLimits(timeout_s=20.0), workers=1) as ex:
        pid = ex.call(add, {"a": 0, "b": 0})["pid"]
        with pytest.raises(SandboxTimeout, match=r"timed out after 1 s"):
            ex.call(sleeper, {}, timeout_s=1.0)
        assert not alive(pid)
        fresh = ex.call(add, {"a": 1, "b": 1})
        assert fresh["sum"] == 2 and fresh["pid"] != pid and alive(fresh["pid"])


def test_other_workers_keep_serving_while_one_call_hangs(executor):
    hung = executor.submit(sleeper, {"seconds": 60.0}, timeout_s=60.0)
    quick = [executor.submit(add, {"a": i, "b": 1}) for i in range(5)]
    assert [f.result()["sum"] for f in quick] == [1, 2, 3, 4, 5]
    assert not hung.done()                       # the quick calls did not wait for the hung one
    executor.close()
    with pytest.raises(SandboxError, match="closed while the call was running"):
        hung.result()


def test_crash_is_reported_and_executor_recovers(executor):
    with pytest.raises(SandboxCrash, match="exited with code 3"):
        executor.call(exits, {"code": 3})
    assert executor.call(add, {"a": 1, "b": 2})["sum"] == 3


def test_memory_limit():
    with ProcessExecutor(SandboxLimits(timeout_s=20.0, memory_mb=256), workers=1) as ex:
        with pytest.raises((SandboxCallError, SandboxCrash), match="MemoryError|memory"):
            ex.call(allocate, {"mb": 2048})
        assert ex.call(allocate, {"mb": 16}) == 16 << 20


def test_fresh_working_directory(executor):
    first_cwd, first = executor.call(write_and_list, {"name": "a.txt"})
    second_cwd, second = executor.call(write_and_list, {"name": "b.txt"})
    assert first == ["a.txt"] and second == ["b.txt"]
    assert first_cwd != second_cwd and os.getcwd() not in (first_cwd, second_cwd)
    assert not os.path.exists(first_cwd)


def test_child_process_of_a_hung_call_is_killed(executor, tmp_path):
    pid_file = tmp_path / "child.pid"
    with pytest.raises(SandboxTimeout):
        executor.call(spawn_and_hang, {"pid_file": str(pid_file)}, timeout_s=3.0)
    assert wait_gone(int(pid_file.read_text()))


def test_child_left_running_by_a_returned_call_is_killed(executor, tmp_path):
    pid = executor.call(spawn_and_return, {"pid_file": str(tmp_path / "child.pid")})
    assert wait_gone(pid)


def test_startup_deadline(monkeypatch):
    import rlkit.sandbox.spawn as spawn
    monkeypatch.setattr(spawn, "BOOT", "import time; time.sleep(120)")
    with ProcessExecutor(SandboxLimits(timeout_s=5.0), workers=1, startup_timeout_s=1.0) as ex:
        with pytest.raises(SandboxCrash, match="did not start within 1 s"):
            ex.call(add, {"a": 1, "b": 1})


def test_close_is_idempotent_and_kills_workers():
    ex = ProcessExecutor(SandboxLimits(timeout_s=20.0), workers=2)
    pid = ex.call(add, {"a": 0, "b": 0})["pid"]
    running = ex.submit(sleeper, {"seconds": 60.0})
    time.sleep(0.2)
    ex.close()
    ex.close()
    with pytest.raises(SandboxError, match="closed"):
        running.result(timeout=30)
    with pytest.raises(SandboxError, match="is closed"):
        ex.submit(add, {"a": 0, "b": 0})
    assert wait_gone(pid)


def test_thread_executor():
    with ThreadExecutor(SandboxLimits(timeout_s=0.5), workers=2) as ex:
        assert ex.call(add, {"a": 1, "b": 2})["pid"] == os.getpid()
        assert ex.call(f"{HERE}:async_double", {"x": 2}) == 4
        with pytest.raises(SandboxCallError, match="Unpicklable: left/right"):
            ex.call(fails, {})
        with pytest.raises(SandboxTimeout, match="leaked thread"):
            ex.call(sleeper, {"seconds": 30.0})
        assert ex.leaked_threads == 1
    ex.close()
    assert isinstance(make_executor("thread", SandboxLimits()), ThreadExecutor)
    with pytest.raises(ValueError, match="'process' or 'thread'"):
        make_executor("fork", SandboxLimits())


def test_limits_are_checked():
    with pytest.raises(ValueError, match="timeout_s must be a finite number > 0"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb must be > 0 or None"):
        SandboxLimits(memory_mb=0)


# ---- the python tool (imported inside the tests: rlkit.environments imports torch) ----

def test_python_tool_prints_and_errors():
    from rlkit.environments.python_tool import python
    assert python("print(6 * 7)") == "42\n"
    assert python("x = 1") == "(no output)"
    out = python("print('before')\n1 / 0")
    assert out.startswith("before\n") and out.rstrip().endswith("ZeroDivisionError: division by zero")
    assert 'File "<code>", line 2' in out and "python_tool.py" not in out
    assert python("import sys; print('a'); sys.exit(3)") == "a\nSystemExit: 3"
    assert "SyntaxError" in python("def (")
    import sys as real_sys
    assert python("import sys; sys.stderr.write('warn\\n')") == "warn\n" and real_sys.stdout is sys.stdout


def test_python_tool_truncates_long_output():
    from rlkit.environments.python_tool import MAX_OUTPUT_CHARS, python
    out = python("for i in range(100000): print(i)")
    assert len(out) <= MAX_OUTPUT_CHARS + 100 and "characters cut" in out
    assert out.startswith("0\n1\n") and out.endswith("99999\n")


def test_python_tool_schema():
    from transformers.utils import get_json_schema

    from rlkit.environments.python_tool import python
    schema = get_json_schema(python)
    fn = schema["function"]
    assert fn["name"] == "python" and fn["parameters"]["required"] == ["code"]
    assert fn["parameters"]["properties"]["code"]["type"] == "string"


def test_python_tool_under_executor():
    from rlkit.environments.python_tool import WORKER_REF
    with ProcessExecutor(SandboxLimits(timeout_s=2.0), workers=1) as ex:
        assert ex.call(WORKER_REF, {"code": "import os; print(os.listdir('.'))"}) == "[]\n"
        assert "torch" not in ex.call(WORKER_REF, {"code": "import sys; print(sorted(sys.modules))"})
        with pytest.raises(SandboxTimeout):
            ex.call(WORKER_REF, {"code": "while True: pass"})
        assert ex.call(WORKER_REF, {"code": "print('ok')"}) == "ok\n"
