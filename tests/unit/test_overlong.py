"""DAPO soft overlong penalty: hand numbers, and the reward manager feeding it the generated token ids."""

import pytest

from rewards.overlong import overlong_penalty
from rlkit.rewards import RewardManager, RewardSpec


def test_ramp_hand_numbers():
    ids = [[1] * n for n in (0, 4, 5, 6, 7, 8)]
    # max_len 8, buffer 4 -> free up to 4 tokens, then -(L - 4)/4 * 0.5
    assert overlong_penalty(["x"] * 6, ids, max_len=8, buffer=4, penalty=0.5) == pytest.approx(
        [0.0, 0.0, -0.125, -0.25, -0.375, -0.5])
    with pytest.raises(ValueError, match="buffer=9"):
        overlong_penalty(["x"], [[1]], max_len=8, buffer=9)


def test_manager_adds_it_to_the_task_reward_without_touching_success():
    mgr = RewardManager([RewardSpec("exact_match"),
                         RewardSpec("overlong_penalty", kwargs={"max_len": 8, "buffer": 4})])
    res = mgr.score(["1+1=", "1+1="], ["2", "3"], {"answer": ["2", "2"]},
                    completion_ids=[[7, 0], [9] * 8])
    assert res.rewards.tolist() == pytest.approx([1.0, -1.0])      # 1 + 0 and 0 + (-1)
    assert res.success.tolist() == [1.0, 0.0]                        # success comes from exact_match only
