"""rlkit.rewards and the built-in reward plug-ins: signatures, weighting, success, failures, timeouts."""

import logging
import math
import textwrap
import time

import pytest
import torch

from rewards.arithmetic import exact_match
from rewards.format import format_reward
from rewards.math import math_verify_reward
from rlkit.registry import PluginError
from rlkit.rewards import (BATCH, PER_SAMPLE, RewardFailure, RewardManager, RewardSignatureError, RewardSpec,
                           check_signature, load_reward)

PLUGINS = '''
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


def test_raising_sample_isolated_counted_logged_once(spec, caplog):
    manager = RewardManager([spec("boom_on_b")], failure_value=-1.0)
    with caplog.at_level(logging.WARNING, logger="rlkit.rewards"):
        first = manager.score(["p"] * 3, ["a", "b", "c"], {})
        second = manager.score(["p"] * 2, ["b", "a"], {})
    assert first.rewards.tolist() == [1.0, -1.0, 1.0] and second.rewards.tolist() == [-1.0, 1.0]
    assert first.metrics["failures"] == 1.0 and first.metrics["boom_on_b/failures"] == 1.0
    warnings = [r for r in caplog.records if r.name == "rlkit.rewards" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ZeroDivisionError: bad sample" in warnings[0].getMessage()


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
