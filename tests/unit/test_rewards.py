"""rlkit.rewards and the built-in reward plug-ins: signatures, weighting, success, failures, timeouts."""

import logging
import math
import os
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rewards.arithmetic import exact_match
from rewards.format import format_reward
from rewards.math import math_verify_reward
from rlkit.registry import PluginError
from rlkit.rewards import (BATCH, PER_SAMPLE, RewardFailure, RewardManager, RewardSignatureError, RewardSpec,
                           check_signature, load_reward)

PLUGINS = '''
import functools
import os
import time

def half_or_none(completions, **kwargs):
    return [{"a": 1.0, "b": 0.0}.get(c) for c in completions]

def constant(completions, value=0.5):
    return [value if c == "a" else None for c in completions]

def graded(prompts, completions, answer):
    return [{"reward": float(c == a), "success": c == a, "len": len(c), "note": "x"}
            for c, a in zip(completions, answer)]

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    assert data_source == "arith" and extra_info == {"difficulty": 2}
    return {"score": float(solution_str == ground_truth), "acc": solution_str == ground_truth}

def boom_on_b(completions, **kwargs):
    if "b" in completions:
        raise ZeroDivisionError("bad sample")
    return [1.0] * len(completions)

def slow_on_b(completions, **kwargs):
    if "b" in completions:
        time.sleep(5)
    return [1.0] * len(completions)

def always_hangs(completions, **kwargs):
    time.sleep(5)

def always_raises(completions, **kwargs):
    raise KeyError("no luck")

def wrong_length(completions, **kwargs):
    return [1.0]

def text_for_b(completions, **kwargs):
    return ["high" if c == "b" else 1.0 for c in completions]

def bad_signature(text, label):
    return 0.0

def pid_reward(completions, **kwargs):
    return [float(os.getpid())] * len(completions)

def hang_on_b(completions, pid_dir):
    if "b" in completions:
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        time.sleep(60)
    return [1.0] * len(completions)

class PidScorer:
    def __call__(self, completions, **kwargs):
        return [float(os.getpid())] * len(completions)

def _make_closure():
    def inner(completions, **kwargs):
        return [float(os.getpid())] * len(completions)
    return inner

scorer = PidScorer()
closure_reward = _make_closure()
partial_reward = functools.partial(pid_reward)
lambda_reward = lambda completions, **kwargs: [float(os.getpid())] * len(completions)
'''


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugins") / "my_rewards.py"
    path.write_text(textwrap.dedent(PLUGINS))
    return path


@pytest.fixture
def spec(plugin_file):
    return lambda attr, weight=1.0, **kw: RewardSpec(f"{plugin_file}:{attr}", weight, kw)


def test_signatures_detected(spec):
    assert check_signature(exact_match) == BATCH and check_signature(lambda prompts, completions: 0) == BATCH
    assert load_reward(spec("compute_score")).style == PER_SAMPLE
    assert load_reward(spec("graded")).name == "graded"


def test_bad_signature_error(spec):
    with pytest.raises(RewardSignatureError, match=r"bad_signature\(text, label\).*completions.*solution_str"):
        load_reward(spec("bad_signature"))
    assert issubclass(RewardSignatureError, ValueError)


def test_options_are_checked_and_missing_files_named(spec, tmp_path):
    with pytest.raises(PluginError, match="unknown option 'valeu' \\(did you mean 'value'\\?\\)"):
        load_reward(spec("constant", valeu=1))
    with pytest.raises(PluginError, match="filled by rlkit"):
        load_reward(spec("constant", completions=[]))
    with pytest.raises(PluginError, match="nope.py"):
        load_reward(RewardSpec(f"{tmp_path}/nope.py:fn"))


def test_weights_combine_and_none_is_unscorable(spec):
    manager = RewardManager([spec("half_or_none", 2.0), spec("constant", -1.0, value=0.5)])
    result = manager.score(["p"] * 3, ["a", "b", "c"], {})
    # a: 2*1.0 + (-1)*0.5 = 1.5;  b: 2*0.0 + None(0) = 0.0;  c: None and None -> NaN (unscorable)
    assert result.rewards[:2].tolist() == [1.5, 0.0] and math.isnan(result.rewards[2])
    assert torch.equal(result.components.isnan(), torch.tensor([[False, False], [False, True], [True, True]]))
    assert result.names == ["half_or_none", "constant"] and torch.isnan(result.success).all()
    assert result.metrics["half_or_none/mean"] == 0.5 and result.metrics["unscorable"] == 1.0


def test_dict_results_split_reward_and_success(spec):
    result = RewardManager([spec("graded")]).score(["p", "p"], ["47", "46"], {"answer": ["47", "47"], "x": [0, 0]})
    assert result.rewards.tolist() == [1.0, 0.0] and result.success.tolist() == [1.0, 0.0]
    assert result.metrics["graded/len"] == 2.0 and "graded/note" not in result.metrics


def test_verl_style_per_sample(spec):
    manager = RewardManager([spec("compute_score")])
    cols = {"answer": ["3", "3"], "data_source": ["arith", "arith"], "difficulty": [2, 2]}
    result = manager.score(["1+2=", "1+2="], ["3", "4"], cols)
    assert result.rewards.tolist() == [1.0, 0.0] and result.metrics["compute_score/acc"] == 0.5
    with pytest.raises(RewardFailure, match="column\\(s\\) answer"):
        manager.score(["p"], ["3"], {"data_source": ["arith"]})
    # verl's preprocessed parquet layout, unchanged: reward_model.ground_truth and its own extra_info column
    verl = {"data_source": ["arith", "arith"], "reward_model": [{"style": "rule", "ground_truth": "3"}] * 2,
            "extra_info": [{"difficulty": 2}] * 2}
    assert manager.score(["1+2="] * 2, ["3", "4"], verl).rewards.tolist() == [1.0, 0.0]


def test_raising_sample_isolated_counted_logged_once(spec, caplog):
    manager = RewardManager([spec("boom_on_b")], failure_value=-1.0)
    with caplog.at_level(logging.WARNING, logger="rlkit.rewards"):
        first = manager.score(["p"] * 3, ["a", "b", "c"], {})
        second = manager.score(["p"] * 2, ["b", "a"], {})
    assert first.rewards.tolist() == [1.0, -1.0, 1.0] and second.rewards.tolist() == [-1.0, 1.0]
    assert first.metrics["failures"] == 1.0 and first.metrics["boom_on_b/failures"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "rlkit.rewards" and r.levelno == logging.WARNING]
    failures = [w for w in warnings if "failed on sample" in w]
    retries = [w for w in warnings if "one sample at a time" in w]
    assert len(failures) == 1 and "ZeroDivisionError: bad sample" in failures[0]     # the failure: logged once
    assert len(retries) == 1 and len(warnings) == 2                                   # the retries: warned once
    assert first.metrics["batch_retries"] == 1.0 and second.metrics["boom_on_b/batch_retries"] == 1.0


def test_non_numeric_value_is_a_sample_failure(spec):
    result = RewardManager([spec("text_for_b")]).score(["p"] * 2, ["a", "b"], {})
    assert result.rewards.tolist() == [1.0, 0.0] and result.metrics["failures"] == 1.0


def test_timeout_does_not_hang(spec):
    manager = RewardManager([spec("slow_on_b")], timeout_s=0.2, failure_value=-1.0)
    t0 = time.perf_counter()
    result = manager.score(["p"] * 3, ["a", "b", "c"], {})
    # batch call times out (0.2 s), then per sample: a ok, b times out (0.2 s), c ok
    assert time.perf_counter() - t0 < 2.0
    assert result.rewards.tolist() == [1.0, -1.0, 1.0] and result.metrics["timeouts"] == 1.0


def test_always_hanging_reward_stops_quickly(spec):
    manager = RewardManager([spec("always_hangs")], timeout_s=0.2)
    t0 = time.perf_counter()
    with pytest.raises(RewardFailure, match="always_hangs.*all 20 samples"):
        manager.score(["p"] * 20, ["a"] * 20, {})
    assert time.perf_counter() - t0 < 2.0       # batch + 3 consecutive timeouts, then the rest skipped


def test_all_failures_raise(spec):
    with pytest.raises(RewardFailure, match="always_raises.*all 2 samples.*KeyError: 'no luck'"):
        RewardManager([spec("always_raises")]).score(["p"] * 2, ["a", "b"], {})


def test_wrong_length_raises(spec):
    with pytest.raises(RewardFailure, match="wrong_length' returned 1 results for 3 completions"):
        RewardManager([spec("wrong_length")]).score(["p"] * 3, ["a", "b", "c"], {})


def test_builtin_exact_match_through_manager():
    result = RewardManager([RewardSpec("exact_match")]).score(
        ["1+2="] * 4, ["3", " 3<|endoftext|>", "3\n4", "03"], {"answer": ["3", "3", "3", "3"]})
    assert result.rewards.tolist() == [1.0, 1.0, 1.0, 0.0] and result.success.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_math_verify_reward():
    got = math_verify_reward(["47", "0.5", "46", "\\boxed{\\frac{1}{3}}", "no number"],
                             ["47", "\\frac{1}{2}", "47", "1/2", "47"])
    assert [g["reward"] for g in got] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [g["success"] for g in got] == [True, True, False, False, False]


def test_format_reward():
    good, bad = "<think>3 plus 4\nis 7</think>\n<answer>7</answer>", "7 <answer>7</answer>"
    assert format_reward([good, bad]) == [1.0, 0.0]
    assert format_reward(["47", "x47"], pattern=r"^\d+$") == [1.0, 0.0]
    result = RewardManager([RewardSpec("format", 0.5, {"pattern": r"^\d+$"})]).score(["p"] * 2, ["47", "x"], {})
    assert result.rewards.tolist() == [0.5, 0.0]


def test_gsm8k_reward():
    from rewards.gsm8k import extract_gold, extract_prediction, gsm8k_reward
    assert extract_gold("She pays 3*4=12 dollars.\n#### 1,234") == "1234"
    assert extract_prediction("so 5+7=12, the answer is \\boxed{12}.") == "12"
    assert extract_prediction("total: 40 apples, then 42") == "42"
    assert extract_prediction("no digits") is None
    out = gsm8k_reward(["The answer is 72.", "It is 71", "nothing"], ["... #### 72", "#### 72", "#### 72"])
    assert [o["reward"] for o in out] == [1.0, 0.0, 0.0] and out[0]["success"] is True


# ---- executors (rlkit.sandbox), external components, allow_empty ----

def _alive(pid: int) -> bool:
    """From /proc: the pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_process_executor_runs_builtin_and_file_rewards(spec):
    manager = RewardManager([RewardSpec("exact_match"), spec("pid_reward", 0.0)], executor="process")
    try:
        assert [rf.executor for rf in manager.functions] == ["process", "process"]
        assert manager.functions[0].worker_ref == "exact_match"
        assert manager.functions[1].worker_ref.startswith("/")                  # path made absolute
        result = manager.score(["1+2="] * 2, ["3", "4"], {"answer": ["3", "3"]})
        # exact_match: 1, 0; pid_reward has weight 0 -> rewards 1.0, 0.0
        assert result.rewards.tolist() == [1.0, 0.0] and result.success.tolist() == [1.0, 0.0]
        worker_pid = int(result.components[0, 1])
        assert worker_pid != os.getpid() and _alive(worker_pid)
    finally:
        manager.close()
        manager.close()                                                         # idempotent
    assert not _alive(worker_pid)


def test_hanging_reward_under_process_is_killed(spec, tmp_path):
    manager = RewardManager([spec("hang_on_b", pid_dir=str(tmp_path))], executor="process", timeout_s=1.0,
                            failure_value=-1.0)
    try:
        result = manager.score(["p"] * 3, ["a", "b", "c"], {})
    finally:
        manager.close()
    # batch call hangs (killed), then per sample: a ok, b hangs (killed), c ok
    assert result.rewards.tolist() == [1.0, -1.0, 1.0] and result.metrics["timeouts"] == 1.0
    hung = [int(p.name) for p in tmp_path.iterdir()]
    assert len(hung) == 2 and not any(_alive(pid) for pid in hung)


def test_auto_executor_choice(spec, caplog):
    names = ["pid_reward", "scorer", "closure_reward", "partial_reward", "lambda_reward"]
    with caplog.at_level(logging.INFO, logger="rlkit.rewards"):
        manager = RewardManager([spec(n) for n in names])
    try:
        assert [rf.executor for rf in manager.functions] == ["process", "thread", "thread", "thread", "thread"]
        pids = manager.score(["p"], ["a"], {}).components[0].tolist()
        assert pids[0] != os.getpid() and pids[1:] == [float(os.getpid())] * 4
        # logged once per process and (reward, executor); 'scorer' appears in no other test
        assert "reward 'scorer' runs in a daemon thread (not a plain importable function)" in caplog.text
    finally:
        manager.close()
    thread_only = RewardManager([spec("pid_reward")], executor="thread")
    assert thread_only.functions[0].executor == "thread"
    assert thread_only.score(["p"], ["a"], {}).components[0].tolist() == [float(os.getpid())]
    assert RewardManager([spec("pid_reward")], timeout_s=None).functions[0].executor == "inline"
    with pytest.raises(ValueError, match="executor='fork'.*auto, process, thread"):
        RewardManager([spec("pid_reward")], executor="fork")


def test_external_components_combine_like_weight_one_functions(spec):
    manager = RewardManager([spec("half_or_none", 2.0)], external_names=["EnvReward"], executor="thread")
    result = manager.score(["p"] * 3, ["a", "b", "c"], {}, external={"EnvReward": [0.5, None, None]})
    # a: 2*1.0 + 1*0.5 = 2.5;  b: 2*0.0 + None(0) = 0.0;  c: None and None -> NaN (unscorable)
    assert result.rewards[:2].tolist() == [2.5, 0.0] and math.isnan(result.rewards[2])
    assert result.names == ["half_or_none", "EnvReward"] and result.components.shape == (3, 2)
    assert result.components[:, 1].isnan().tolist() == [False, True, True]
    assert result.metrics["EnvReward/mean"] == 0.5 and result.metrics["EnvReward/unscorable"] == 2.0
    assert result.metrics["unscorable"] == 1.0
    with pytest.raises(ValueError, match=r"got the keys \['Other'\].*external_names=\['EnvReward'\]"):
        manager.score(["p"], ["a"], {}, external={"Other": [1.0]})
    with pytest.raises(ValueError, match="got the keys"):
        manager.score(["p"], ["a"], {})
    with pytest.raises(ValueError, match="'EnvReward' has 2 values for 1 completions"):
        manager.score(["p"], ["a"], {}, external={"EnvReward": [1.0, 2.0]})
    with pytest.raises(ValueError, match="sample 0: reward value 'x' is not a number"):
        manager.score(["p"], ["a"], {}, external={"EnvReward": ["x"]})
    with pytest.raises(ValueError, match="'half_or_none' is also the name of a reward function"):
        RewardManager([spec("half_or_none")], external_names=["half_or_none"])


def test_allow_empty():
    with pytest.raises(ValueError, match="no reward functions configured"):
        RewardManager([])
    manager = RewardManager([], allow_empty=True, external_names=["Env"])
    result = manager.score(["p", "p"], ["a", "b"], {}, external={"Env": [1.0, None]})
    assert result.rewards[0].item() == 1.0 and math.isnan(result.rewards[1]) and result.names == ["Env"]
    manager.close()
