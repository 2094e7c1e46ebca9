"""Multi-turn tool episodes through the whole trainer (hf engine, tiny model): every sampler, resume, eval."""

from __future__ import annotations

import json
import math

import pytest
from rlkit.config import load_config
from rlkit.plugins import load_builtins
from rlkit.registry import SAMPLERS
from rlkit.trainer import train
from tests.conftest import recipe_dict
from tests.env_fixtures import tool_tiny_model

load_builtins()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SAMPLER_OPTIONS = {"reinforce_ada": {"rounds": 2, "round_repeat": 4}, "gvm": {"probe_n": 4, "correct_threshold": 0.0}}


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    return tool_tiny_model(tmp_path_factory.mktemp("toolmodel") / "model")


def tool_recipe(model, data, out, **train_kw) -> dict:
    c = recipe_dict(model, data, out, **train_kw)
    c["rollout"] = {"n": 4, "max_new_tokens": 6, "temperature": 1.0,
                    "engine": "tests/env_fixtures.py:ForcedFirstCall"}
    # a random model samples invalid UTF-8 byte sequences, whose text re-renders to other ids: real drift, so the
    # canary must measure but not stop these runs (the trained tool quickstart asserts drift 0)
    c["environment"] = {"name": "tools", "tools": ["tests.env_fixtures:multiply"], "max_turns": 2,
                        "executor": "thread", "max_token_drift": 1.0}
    return c


def metric_rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sampler", [n for n in SAMPLERS.names() if ":" not in n])
def test_every_sampler_trains_on_episodes(sampler, tool_model, arith_data, tmp_path):
    c = tool_recipe(tool_model, arith_data, tmp_path / "run", steps=1)
    c["sampler"] = {"name": sampler, **SAMPLER_OPTIONS.get(sampler, {})}
    result = train(load_config(None, [], base=c))
    assert result["environment/turns_mean"] == 2.0                  # forced call, then the model's answer
    assert result["environment/tool_calls_mean"] == 1.0 and result["environment/tool_errors"] == 0.0
    assert 0.0 <= result["environment/token_drift"] <= 1.0
    assert 0.0 < result["environment/env_tokens_frac"] < 1.0
    assert all(math.isfinite(v) for k, v in result.items() if k.startswith(("loss/", "rollout/", "environment/")))


def test_resume_gives_the_same_episodes(tool_model, arith_data, tmp_path):
    """Counter-based seeds: 2 steps straight == 1 step, stop, resume, 1 step (same rewards, same lengths)."""
    straight = tool_recipe(tool_model, arith_data, tmp_path / "a", steps=2, save_every=1)
    train(load_config(None, [], base=straight))
    split = tool_recipe(tool_model, arith_data, tmp_path / "b", steps=1, save_every=1)
    train(load_config(None, [], base=split))
    split["train"]["steps"] = 2
    train(load_config(None, [], base=split))
    a, b = metric_rows(tmp_path / "a"), metric_rows(tmp_path / "b")
    keys = ("reward/mean", "rollout/length_mean", "environment/env_tokens_frac")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_eval_runs_episodes(tool_model, arith_data, tmp_path):
    c = tool_recipe(tool_model, arith_data, tmp_path / "run", steps=1, eval_at_end=True)
    result = train(load_config(None, [], base=c))
    assert result["after/eval/tool_calls_mean"] == 1.0 and result["after/eval/tool_use_frac"] == 1.0


def test_trl_class_owns_the_reward(tool_model, arith_data, tmp_path):
    """A TRL-style class with get_reward and no reward.functions: its reward is the only component."""
    c = tool_recipe(tool_model, arith_data, tmp_path / "run", steps=1)
    c["environment"] = {"name": "tests.env_fixtures:Counter", "max_turns": 2, "max_token_drift": 1.0}
    c["reward"] = {"functions": []}
    result = train(load_config(None, [], base=c))
    # the forced first call asks for `multiply`, which Counter does not have: an error result, counter stays 0,
    # and get_reward = 1.0 exactly when the target (0, no `target` column) equals the counter
    assert result["environment/tool_errors"] == result["environment/tool_calls_mean"] * 16 == 16.0
    assert result["reward/Counter/mean"] == 1.0 and result["reward/mean"] == 1.0
