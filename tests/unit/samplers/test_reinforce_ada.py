"""Reinforce-Ada (rlkit.functional.reinforce_ada): exit-rule truth tables, group selection on hand pools, advantages."""

from __future__ import annotations

import pytest
import torch

from rlkit.functional.reinforce_ada import (
    reinforce_ada_advantages,
    reinforce_ada_exit,
    reinforce_ada_select,
)


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def sel(rewards, n, **kw):
    out = reinforce_ada_select(t(rewards), n, **kw)
    assert out.dtype == torch.long
    return out.tolist()


# ------------------------------------------------------------------ exit rules


@pytest.mark.parametrize(
    ("pos", "neg", "n", "expected"),
    [
        # n=4: need #pos >= 2 and #neg >= 2
        (2, 2, 4, True), (5, 7, 4, True), (1, 3, 4, False), (3, 1, 4, False), (2, 1, 4, False),
        (0, 8, 4, False), (8, 0, 4, False), (0, 0, 4, False),
        # n=5: need #pos >= 2 and #neg >= 3
        (2, 3, 5, True), (3, 2, 5, False), (2, 2, 5, False),
        # n=1: need #pos >= 0 and #neg >= 1
        (0, 1, 1, True), (5, 0, 1, False),
    ],
)
def test_exit_balanced(pos, neg, n, expected):
    assert reinforce_ada_exit(pos, neg, n, "balanced") is expected


@pytest.mark.parametrize(("pos", "neg", "expected"), [(1, 0, True), (3, 0, True), (1, 7, True), (0, 9, False),
                                                      (0, 0, False)])
def test_exit_positive_focused(pos, neg, expected):
    assert reinforce_ada_exit(pos, neg, 4, "positive_focused") is expected


def test_exit_errors():
    with pytest.raises(ValueError, match="rule='pos'"):
        reinforce_ada_exit(1, 1, 4, "pos")
    with pytest.raises(ValueError, match="num_pos=-1"):
        reinforce_ada_exit(-1, 1, 4, "balanced")
    with pytest.raises(ValueError, match="n \\(effective group size\\)=0"):
        reinforce_ada_exit(1, 1, 0, "balanced")


# ------------------------------------------------------------------ selection


def test_select_balanced_counts():
    # pos at 0,2,3,6; neg at 1,4,5,7 -> first 2 pos (0,2) + first 2 neg (1,4)
    assert sel([1, 0, 1, 1, 0, 0, 1, 0], 4) == [0, 1, 2, 4]


def test_select_odd_n():
    # n=5: 2 pos (1,2) + 3 neg (0,4,5)
    assert sel([0, 1, 1, 1, 0, 0, 0, 1, 0], 5) == [0, 1, 2, 4, 5]


def test_select_threshold_is_strict():
    # tau=0.7: 0.7 is negative, 0.9 and 0.71 positive -> 1 pos (1) + 1 neg (0)
    assert sel([0.7, 0.9, 0.1, 0.71], 2) == [0, 1]
    assert sel([0.7, 0.9, 0.1, 0.71], 2, threshold=0.05) == [0, 1]  # all positive -> first two


def test_select_generation_order():
    # positives come last; output is sorted by generation index
    assert sel([0, 0, 0, 0, 1, 1], 4) == [0, 1, 4, 5]


def test_select_too_few_negatives_tops_up_with_positives():
    # pos target 2 -> 0,1; only one neg (3); short 1 -> next positive 2
    assert sel([1, 1, 1, 0, 1, 1, 1, 1], 4) == [0, 1, 2, 3]
    assert sel([1, 1, 1, 1, 1, 1, 1, 0], 4) == [0, 1, 2, 7]


def test_select_too_few_positives_tops_up_with_negatives():
    # one pos (3); neg target 2 -> 0,1; short 1, no positive left -> next negative 2
    assert sel([0, 0, 0, 1, 0, 0], 4) == [0, 1, 2, 3]


def test_select_all_one_kind():
    assert sel([1] * 8, 4) == [0, 1, 2, 3]
    assert sel([0] * 8, 4) == [0, 1, 2, 3]


def test_select_pool_smaller_than_n():
    assert sel([1, 0, 1], 4) == [0, 1, 2]
    assert sel([], 4) == []


def test_select_positive_focused_finished_uses_balanced_targets():
    # finished: floor(4/2)=2 pos (0,1) + 2 neg (6,7)
    assert sel([1, 1, 1, 1, 1, 1, 0, 0], 4, rule="positive_focused") == [0, 1, 6, 7]


def test_select_positive_focused_unfinished_fallback():
    # 6/8 positive: pos_target = clip(ceil(6/8*4)=3, 1, 3) = 3 -> pos 0,1,2 + neg 6
    assert sel([1, 1, 1, 1, 1, 1, 0, 0], 4, rule="positive_focused", finished=False) == [0, 1, 2, 6]
    # 7/8: ceil(3.5)=4 clipped to take-1=3 -> pos 0,1,2 + neg 7
    assert sel([1, 1, 1, 1, 1, 1, 1, 0], 4, rule="positive_focused", finished=False) == [0, 1, 2, 7]
    # no positive (the real unfinished case): pos_target=1 unmet -> first 4 negatives
    assert sel([0] * 8, 4, rule="positive_focused", finished=False) == [0, 1, 2, 3]
    # take=1: clip(., 1, 0) = 0 -> one negative
    assert sel([0], 4, rule="positive_focused", finished=False) == [0]


def test_select_finished_flag_ignored_for_balanced():
    pool = [1, 1, 1, 1, 1, 1, 0, 0]
    assert sel(pool, 4, finished=False) == sel(pool, 4, finished=True) == [0, 1, 6, 7]


def test_select_errors():
    with pytest.raises(ValueError, match="rule='x'"):
        sel([1, 0], 2, rule="x")
    with pytest.raises(ValueError, match="n \\(effective group size\\)=0"):
        sel([1, 0], 0)
    with pytest.raises(ValueError, match="1-D"):
        reinforce_ada_select(t([[1.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="NaN"):
        sel([1.0, float("nan")], 2)


# ------------------------------------------------------------------ global-statistics advantages


def test_advantages_global_mean():
    # pool 3 pos + 1 neg: mu = 0.75 -> kept [1, 0] -> [0.25, -0.75]
    torch.testing.assert_close(reinforce_ada_advantages(t([1.0, 0.0]), 3, 1), t([0.25, -0.75]), atol=1e-12, rtol=0)


def test_advantages_std_scaled():
    # std_Bessel = sqrt(3*1/(4*3)) = 0.5 -> divide by 0.5 + 1e-6
    out = reinforce_ada_advantages(t([1.0, 0.0]), 3, 1, norm_by_std=True)
    torch.testing.assert_close(out, t([0.25 / 0.500001, -0.75 / 0.500001]), atol=1e-12, rtol=0)


def test_advantages_degenerate_pools():
    # all positive: mu = 1 -> 0, sigma floored at eps -> still 0 when scaled
    assert reinforce_ada_advantages(t([1.0] * 4), 8, 0).tolist() == [0.0] * 4
    assert reinforce_ada_advantages(t([1.0] * 4), 8, 0, norm_by_std=True).tolist() == [0.0] * 4
    # pool of size 1: mu = 0, sigma = 1
    torch.testing.assert_close(reinforce_ada_advantages(t([1.0]), 1, 0, norm_by_std=True), t([1.0 / 1.000001]),
                               atol=1e-12, rtol=0)
    # non-binary reward: numerator uses the reward, mu the binarised count (2 pos of 4 -> 0.5)
    torch.testing.assert_close(reinforce_ada_advantages(t([0.9, 0.3]), 2, 2), t([0.4, -0.2]), atol=1e-12, rtol=0)


def test_advantages_errors():
    with pytest.raises(ValueError, match="pool has only"):
        reinforce_ada_advantages(t([1.0, 0.0, 1.0]), 1, 1)
    with pytest.raises(ValueError, match="num_neg=-2"):
        reinforce_ada_advantages(t([1.0]), 1, -2)
