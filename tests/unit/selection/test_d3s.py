"""D³S (rlkit.functional.selection): hand-computed selections, brute-force max-variance property, token ranking,
schedules. Every expected value is written out here, never produced by the module under test."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.functional.selection import (
    cosine_schedule,
    d3s_keep_count,
    d3s_select_samples,
    d3s_select_tokens,
    linear_schedule,
)


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def b(x):
    return torch.tensor(x, dtype=torch.bool)


def same(actual, expected):
    assert actual.dtype == torch.bool
    assert actual.tolist() == expected


def pvar(values):
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


# ----------------------------------------------------------------------------------- sample level, by hand


def test_cross_hand_example():
    # sorted desc: 2.0(i2) 1.0(i5) 0.5(i0) 0.0(i3) -0.5(i4) -1.0(i1); m = 3
    # j=0 {0,-.5,-1}: 1/6   j=1 {2,-.5,-1}: 186/108 = 1.722   j=2 {2,1,-1}: 42/27 = 1.556   j=3 {2,1,.5}: 0.389
    adv = t([0.5, -1.0, 2.0, 0.0, -0.5, 1.0])
    same(d3s_select_samples(adv, ids([0, 0, 0, 1, 1, 1]), 3), [False, True, True, False, True, False])


def test_cross_ignores_group_ids_and_drops_zero_groups():
    # sorted: 1(i0) .5(i4) 0(i2) 0(i3) -.5(i5) -1(i1); m = 4: j=2 {1,.5,-.5,-1} var .625 beats j=1/j=3 (.546875)
    adv = t([1.0, -1.0, 0.0, 0.0, 0.5, -0.5])
    expected = [True, True, False, False, True, True]
    same(d3s_select_samples(adv, ids([4, 4, 1, 1, 9, 9]), 4), expected)
    same(d3s_select_samples(adv, ids([0, 1, 2, 3, 4, 5]), 4, mode="cross"), expected)


def test_cross_tie_rules():
    # equal values: stable descending order 1(i0) 1(i2) -1(i1) -1(i3); j=1 -> top = i0, bottom = LAST entry i3
    same(d3s_select_samples(t([1.0, -1.0, 1.0, -1.0]), ids([0] * 4), 2), [True, False, False, True])
    # equal variances: j=1 {3,-1,-3} and j=2 {3,1,-3} both 168/27 -> smallest j = 1 wins
    same(d3s_select_samples(t([3.0, 1.0, -1.0, -3.0]), ids([0] * 4), 3), [True, False, True, True])
    same(d3s_select_samples(t([0.3, 0.1, -0.1, -0.3]), ids([0] * 4), 3), [True, False, True, True])
    # all equal batch: keeps the first m in index order
    same(d3s_select_samples(t([0.0, 0.0, 0.0, 0.0]), ids([0] * 4), 2), [True, True, False, False])


def test_intra_hand_example_non_contiguous_mixed_sizes():
    # group 7 = i0,i2,i4,i7 values 1,-.5,.5,-1 -> {i0, i7} (var 1); group 3 = i1,i3,i6 all 0 -> first 2: i1,i3;
    # group 9 = i5,i8 (size 2 <= m) -> all
    adv = t([1.0, 0.0, -0.5, 0.0, 0.5, 0.3, 0.0, -1.0, 0.3])
    gid = ids([7, 3, 7, 3, 7, 9, 3, 7, 9])
    same(d3s_select_samples(adv, gid, 2, mode="intra"), [True, True, False, True, False, True, False, True, True])


def test_intra_tie_keeps_bottom_of_stable_order():
    # [2, 2, -1], m = 2: j=0 {2(i1), -1} and j=1 {2(i0), -1} both 2.25 -> j=0: the bottom picks are the LAST two
    same(d3s_select_samples(t([2.0, 2.0, -1.0, 5.0, 5.0]), ids([1, 1, 1, 0, 0]), 2, mode="intra"),
         [False, True, True, True, True])


def test_keep_at_least_size_keeps_all():
    adv = t([0.5, -1.0, 2.0, 0.0, -0.5, 1.0])
    same(d3s_select_samples(adv, ids([0] * 6), 6), [True] * 6)
    same(d3s_select_samples(adv, ids([0] * 6), 10), [True] * 6)
    same(d3s_select_samples(adv, ids([5, 5, 2, 2, 2, 8]), 3, mode="intra"), [True] * 6)
    assert d3s_select_samples(t([]), ids([]), 2).tolist() == []


def test_sample_errors():
    adv, gid = t([1.0, 0.0, -1.0]), ids([0, 0, 0])
    for bad in (1, 0, -3, True, 2.0):
        with pytest.raises(ValueError, match="keep >= 2"):
            d3s_select_samples(adv, gid, bad)
    with pytest.raises(ValueError, match="NaN"):
        d3s_select_samples(t([1.0, float("nan"), 0.0]), gid, 2)
    with pytest.raises(ValueError, match="mode"):
        d3s_select_samples(adv, gid, 2, mode="inter")
    with pytest.raises(ValueError, match="same length"):
        d3s_select_samples(adv, ids([0, 0]), 2)


def test_float32_input_and_original_not_modified():
    adv = torch.tensor([0.5, -1.0, 2.0, 0.0, -0.5, 1.0], dtype=torch.float32)
    before = adv.clone()
    same(d3s_select_samples(adv, ids([0] * 6), 3), [False, True, True, False, True, False])
    assert torch.equal(adv, before)


# ------------------------------------------------------------------------ sample level, brute-force property

VALUES = st.one_of(st.sampled_from([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]),
                   st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False))


def check_group(values, kept_flags, m):
    n = len(values)
    kept = [v for v, k in zip(values, kept_flags) if k]
    assert len(kept) == min(m, n)
    if m >= n:
        return
    if len(set(values)) == 1:  # all-equal rule: the first m in index order
        assert kept_flags == [True] * m + [False] * (n - m)
        return
    best = max(pvar([values[i] for i in s]) for s in itertools.combinations(range(n), m))
    assert pvar(kept) == pytest.approx(best, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(VALUES, min_size=1, max_size=9), m=st.integers(2, 10))
def test_cross_matches_brute_force(values, m):
    out = d3s_select_samples(t(values), ids([3] * len(values)), m, mode="cross").tolist()
    check_group(values, out, m)


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.tuples(VALUES, st.sampled_from([0, 2, 5, 11])), min_size=1, max_size=9),
       m=st.integers(2, 6))
def test_intra_matches_brute_force_per_group(data, m):
    values, gid = [v for v, _ in data], [g for _, g in data]
    out = d3s_select_samples(t(values), ids(gid), m, mode="intra").tolist()
    for g in set(gid):
        rows = [i for i, x in enumerate(gid) if x == g]
        check_group([values[i] for i in rows], [out[i] for i in rows], m)


# ----------------------------------------------------------------------------------------------- token level

ENT = [[0.5, 1.0, 0.2], [0.1, 0.3, 0.9], [2.0, 0.4, 1.0]]


def test_tokens_row_advantages_global_ranking_and_ceil():
    # scores |A|*H with A = [1, -2, .5]: row0 .5 1.0 .2 | row1 .2 .6 1.8 | row2 1.0 (.2 .5 masked) -> 7 valid tokens
    adv = t([1.0, -2.0, 0.5])
    mask = b([[True, True, True], [True, True, True], [True, False, False]])
    # 7 * 0.3 = 2.1 -> ceil 3: 1.8 (1,2), 1.0 (0,1), 1.0 (2,0)
    same(d3s_select_tokens(adv, t(ENT), mask, 0.3),
         [[False, True, False], [False, False, True], [True, False, False]])
    # 7 * 0.25 = 1.75 -> 2: tie 1.0 at flat 1 and flat 6 -> the earlier flat index (0,1) wins
    same(d3s_select_tokens(adv, t(ENT), mask, 0.25),
         [[False, True, False], [False, False, True], [False, False, False]])


def test_tokens_matrix_advantages_zero_row_unchanged():
    # row1 has A = 0 everywhere -> kept as is and out of the ranking; ranked scores: row0 1 0 2 | row2 .5 2 0
    adv = t([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [2.0, -0.5, 0.0]])
    ent = t([[1.0, 5.0, 2.0], [9.0, 9.0, 9.0], [0.25, 4.0, 3.0]])
    mask = b([[True] * 3] * 3)
    same(d3s_select_tokens(adv, ent, mask, 0.5),  # 6 * .5 = 3: 2 (0,2), 2 (2,1), 1 (0,0)
         [[True, False, True], [True, True, True], [False, True, False]])
    same(d3s_select_tokens(adv, ent, mask, 1 / 6),  # 1 token: tie 2.0 at flat 2 and 7 -> (0,2)
         [[False, False, True], [True, True, True], [False, False, False]])


def test_tokens_zero_scalar_advantage_row_and_zero_length_row():
    # row0 A = 0 -> mask unchanged; row1 ranks 2 tokens, 0.5 * 2 = 1 -> the larger score (1,1)
    same(d3s_select_tokens(t([0.0, 1.0]), t([[5.0, 5.0], [1.0, 2.0]]), b([[True, False], [True, True]]), 0.5),
         [[True, False], [False, True]])
    # row0 is empty: stays empty and is not counted; 3 * 0.34 = 1.02 -> 2 tokens of row1 (scores 3, 2)
    same(d3s_select_tokens(t([1.0, 1.0]), t([[9.0, 9.0, 9.0], [1.0, 3.0, 2.0]]),
                           b([[False] * 3, [True] * 3]), 0.34),
         [[False, False, False], [False, True, True]])


def test_tokens_count_is_robust_to_float_noise():
    # 0.28 * 25 = 7.000000000000001 in floating point: still 7 tokens (the top scores 24 .. 18), not 8
    ent = torch.arange(25, dtype=torch.float64)[None, :]
    out = d3s_select_tokens(t([1.0]), ent, torch.ones(1, 25, dtype=torch.bool), 0.28)
    assert out.nonzero()[:, 1].tolist() == [18, 19, 20, 21, 22, 23, 24]


def test_tokens_ratio_one_identity_subset_and_errors():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(5, 7, generator=gen) > 0.4
    adv, ent = torch.randn(5, generator=gen), torch.rand(5, 7, generator=gen)
    assert torch.equal(d3s_select_tokens(adv, ent, mask, 1.0), mask)
    for ratio in (0.05, 0.3, 0.5, 0.9):
        out = d3s_select_tokens(adv, ent, mask, ratio)
        assert not (out & ~mask).any()
        assert int(out.sum()) == math.ceil(ratio * int(mask.sum()) - 1e-9)
    float_mask = mask.double()
    assert torch.equal(d3s_select_tokens(adv, ent, float_mask, 0.5), d3s_select_tokens(adv, ent, mask, 0.5))
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            d3s_select_tokens(adv, ent, mask, bad)
    with pytest.raises(ValueError, match="advantages"):
        d3s_select_tokens(torch.zeros(4), ent, mask, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        d3s_select_tokens(adv, torch.full((5, 7), float("nan")), mask, 0.5)


# ---------------------------------------------------------------------------------------- schedules / counts


def test_linear_schedule_hand_numbers():
    assert [linear_schedule(0.5, 1.0, p) for p in (0.0, 0.25, 0.5, 1.0)] == [0.5, 0.625, 0.75, 1.0]
    assert linear_schedule(0.2, 1.0, 0.5) == pytest.approx(0.6, abs=1e-15)


def test_cosine_schedule_hand_numbers():
    # p = .25: 1 - 0.5 * (1 + sqrt(2)/2) / 2 = 1 - 0.4267766952966369
    got = [cosine_schedule(0.5, 1.0, p) for p in (0.0, 0.25, 0.5, 1.0)]
    assert got == pytest.approx([0.5, 0.5732233047033631, 0.75, 1.0], abs=1e-15)


def test_schedule_progress_validation():
    for fn in (linear_schedule, cosine_schedule):
        assert fn(0.5, 1.0, 1.0 + 1e-12) == 1.0
        assert fn(0.5, 1.0, -1e-12) == 0.5
        for bad in (-0.1, 1.1, float("nan")):
            with pytest.raises(ValueError, match="progress"):
                fn(0.5, 1.0, bad)


def test_keep_count_hand_numbers():
    cases = {(0.5, 8): 4, (0.3, 7): 3, (0.1, 8): 2, (0.01, 3): 2, (1.0, 5): 5, (0.28, 25): 7, (0.5, 1): 1, (0.5, 0): 0}
    assert {key: d3s_keep_count(*key) for key in cases} == cases
    for ratio, n in ((0.0, 4), (1.2, 4), (0.5, -1), (0.5, 2.0)):
        with pytest.raises(ValueError):
            d3s_keep_count(ratio, n)
