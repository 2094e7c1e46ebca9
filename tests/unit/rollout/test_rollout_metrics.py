"""rlkit.rollout.collect.zero_std_frac: the share of groups whose advantages are all 0 (the samplers' regime)."""

import math

import torch

from rlkit.rollout.collect import zero_std_frac

NAN = math.nan


def test_zero_std_frac_by_hand():
    # group 0: success 1,1,1 -> constant;  group 1: 0,1 -> varies;  group 2: one row -> counts as constant;
    # group 3: no success signal, rewards 0.5, 0.5 -> constant by the reward fallback;  group 4: no success,
    # rewards 0.2, 0.9 -> varies.  Constant: groups 0, 2, 3 of 5 -> 3/5.
    group_ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4, 4])
    success = torch.tensor([1, 1, 1, 0, 1, 0, NAN, NAN, NAN, NAN])
    rewards = torch.tensor([1.0, 1.2, 0.8, 0.0, 1.0, 0.0, 0.5, 0.5, 0.2, 0.9])
    assert zero_std_frac(group_ids, success, rewards) == 3 / 5


def test_zero_std_frac_success_wins_over_shaped_reward():
    # all wrong answers with a varying format bonus: the success signal is constant, so the group is uninformative
    assert zero_std_frac(torch.tensor([7, 7]), torch.tensor([0.0, 0.0]), torch.tensor([0.1, 0.3])) == 1.0
    # a NaN success among valid ones is ignored: 1 vs 0 still varies
    assert zero_std_frac(torch.tensor([7, 7, 7]), torch.tensor([1.0, NAN, 0.0]), torch.zeros(3)) == 0.0
