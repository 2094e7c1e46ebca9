"""Rewards get what TRL's GRPOTrainer passes them (rlkit/reward_calls.py): conversational prompts and completions
as message lists, trainer_state, log_metric / log_extra (also from a worker process), async functions run
concurrently, callable objects; and TRL's own reward functions, unchanged (skipped without trl)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest

from rlkit.reward_calls import RewardState, completion_text
from rlkit.rewards import RewardManager, RewardSpec

CHAT = [[{"role": "user", "content": "1+2="}], [{"role": "user", "content": "2+2="}]]
SEEN: dict = {}


def spy(completions, prompts, trainer_state, log_metric, log_extra, **kwargs):
    SEEN.update(completions=completions, prompts=prompts, state=trainer_state, columns=sorted(kwargs))
    log_metric("length", float(len(completions)))
    log_extra("echo", [completion_text(c) for c in completions])
    return [1.0 if completion_text(c) == "3" else 0.0 for c in completions]


def _manager(fn, **kw) -> RewardManager:
    from rlkit.registry import REWARDS
    if fn.__name__ not in REWARDS.names():
        REWARDS.register(fn.__name__)(fn)
    return RewardManager([RewardSpec(fn.__name__)], **kw)


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_conversational_data_gets_messages_state_and_logging_callbacks(executor):
    manager = _manager(spy, executor=executor)
    state = RewardState(global_step=4, max_steps=10, epoch=0.5)
    out = manager.score(["1+2=", "2+2="], ["3", "5"], {"answer": ["3", "4"]}, completion_ids=[[1], [2]],
                        raw_prompts=CHAT, state=state)
    assert out.rewards.tolist() == [1.0, 0.0]
    assert out.metrics["spy/length"] == 2.0 and out.logged == {"echo": ["3", "5"]}   # through the worker too
    if executor == "thread":                      # what the function saw (in this process)
        assert SEEN["prompts"] == CHAT and SEEN["state"] == state and SEEN["columns"] == ["answer", "completion_ids"]
        assert SEEN["completions"] == [[{"role": "assistant", "content": "3"}], [{"role": "assistant", "content": "5"}]]
    plain = manager.score(["1+2="], ["3"], {"answer": ["3"]}, raw_prompts=["1+2="])
    assert plain.rewards.tolist() == [1.0] and (executor == "process" or SEEN["completions"] == ["3"])


def test_async_rewards_run_concurrently_and_objects_are_called():
    barrier = threading.Barrier(2, timeout=30)   # each waits for the other: only concurrent calls finish

    async def left(completions, **kwargs):
        await asyncio.to_thread(barrier.wait)
        return [1.0] * len(completions)

    async def right(completions, **kwargs):
        await asyncio.to_thread(barrier.wait)
        return [None] * len(completions)          # None: this sample is not scored by this function

    class Length:
        def __call__(self, completions, **kwargs):
            return [float(len(completion_text(c))) for c in completions]

    from rlkit.registry import REWARDS
    for name, fn in (("async_left", left), ("async_right", right), ("length_obj", Length())):
        if name not in REWARDS.names():
            REWARDS.register(name)(fn)
    manager = RewardManager([RewardSpec("async_left"), RewardSpec("async_right"), RewardSpec("length_obj", 0.5)])
    out = manager.score(["p", "q"], ["ab", "abcd"], {})
    assert out.rewards.tolist() == [1.0 + 1.0, 1.0 + 2.0]
    assert out.components[:, 1].isnan().all() and manager.functions[0].is_async


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (pip install 'rlkit[dev]')")
def test_trls_own_rewards_run_unchanged_on_conversational_data():
    pytest.importorskip("math_verify")
    manager = RewardManager([RewardSpec("trl.rewards:accuracy_reward"), RewardSpec("trl.rewards:think_format_reward")])
    completions = ["<think>\nadd\n</think>\nThe answer is $\\boxed{3}$", "It is $\\boxed{5}$"]
    out = manager.score(["1+2=", "2+2="], completions, {"solution": ["$3$", "$4$"]}, raw_prompts=CHAT)
    assert out.components.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert out.logged["solution"] == ["$3$", "$4$"]                     # accuracy_reward's log_extra columns
