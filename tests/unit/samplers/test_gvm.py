"""GVM-RAFT allocation (rlkit.functional.gvm): hand-computed allocations, the exact rounding rule, fallbacks, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.functional.gvm import gvm_allocation


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def alloc(p, g, budget, **kw):
    return gvm_allocation(t(p), t(g), budget, **kw).tolist()


# ------------------------------------------------------------------ proportionality


def test_proportional_no_regulariser():
    # alpha=0: w = G/sqrt(p) = [1/0.5, 2/1, 0.2/0.2] = [2, 2, 1] -> ratios [0.4, 0.4, 0.2] -> budget 10: [4, 4, 2]
    assert alloc([0.25, 1.0, 0.04], [1.0, 2.0, 0.2], 10, alpha=0.0) == [4, 4, 2]


def test_regulariser_symmetry_default_alpha():
    # beta=2, alpha=1e-3: denominator sqrt(p + alpha/p) is equal for p=0.1 and p=0.01 (both sqrt(0.11)),
    # so n ∝ G = [1, 3] -> budget 8: [2, 6]
    assert alloc([0.1, 0.01], [1.0, 3.0], 8) == [2, 6]


def test_beta_one():
    # beta=1: denominator sqrt(p + alpha) = sqrt(0.8), sqrt(0.5); G chosen equal to them -> equal weights
    out = alloc([0.5, 0.2], [0.8 ** 0.5, 0.5 ** 0.5], 4, alpha=0.3, beta=1.0)
    assert out == [2, 2]


def test_low_acceptance_is_damped():
    # alpha=1e-3, beta=2: p=1e-4 -> sqrt(1e-4 + 10) ~ 3.1623; p=0.25 -> sqrt(0.25 + 0.004) ~ 0.50398;
    # weights 1/3.1623 = 0.31622 vs 1/0.50398 = 1.98421 -> scaled by 100/2.30043: 13.746, 86.254 -> [14, 86]
    assert alloc([1e-4, 0.25], [1.0, 1.0], 100) == [14, 86]


def test_zero_rate_or_grad_gets_nothing():
    # only prompt 0 has p > 0 and G > 0
    assert alloc([0.5, 0.0, 0.5], [1.0, 1.0, 0.0], 5) == [5, 0, 0]


# ------------------------------------------------------------------ rounding rule (alpha=0, p=1 so that w = G)


def test_round_half_to_even():
    # ratios [0.75, 0.25], budget 2 -> scaled [1.5, 0.5] -> numpy round [2, 0], sum 2, no correction
    # (round-half-up would give [2, 1] and then [1, 1])
    assert alloc([1.0, 1.0], [3.0, 1.0], 2, alpha=0.0) == [2, 0]


def test_short_adds_to_largest_residual():
    # ratios [1/8, 2/8, 5/8], budget 2 -> scaled [0.25, 0.5, 1.25] -> rounded [0, 0, 1] (0.5 -> 0), short by 1;
    # residuals [0.25, 0.5, 0.25] -> +1 on index 1
    assert alloc([1.0] * 3, [1.0, 2.0, 5.0], 2, alpha=0.0) == [0, 1, 1]


def test_short_ties_go_to_lower_index():
    # ratios 1/3 each, budget 10 -> scaled 3.33 each -> [3, 3, 3], short 1, equal residuals -> index 0
    assert alloc([1.0] * 3, [1.0, 1.0, 1.0], 10, alpha=0.0) == [4, 3, 3]


def test_over_subtracts_most_negative_residual():
    # ratios [3/8, 3/8, 2/8], budget 4 -> scaled [1.5, 1.5, 1.0] -> half-even [2, 2, 1] = 5, over by 1;
    # residuals [-0.5, -0.5, 0] -> -1 on index 0 (tie -> lower index)
    assert alloc([1.0] * 3, [3.0, 3.0, 2.0], 4, alpha=0.0) == [1, 2, 1]
    # ratios 0.2 each, budget 3 -> scaled 0.6 -> rounded 1 each = 5, over by 2 -> -1 on indices 0, 1
    assert alloc([1.0] * 5, [1.0] * 5, 3, alpha=0.0) == [0, 0, 1, 1, 1]


# ------------------------------------------------------------------ uniform fallback and trivial budgets


def test_uniform_fallback_all_zero():
    # every ratio 0 -> 7 // 3 = 2 each, remainder 1 to the first prompt
    assert alloc([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], 7) == [3, 2, 2]
    assert alloc([0.5, 0.5, 0.5, 0.5], [0.0] * 4, 10) == [3, 3, 2, 2]
    assert alloc([0.0, 0.5], [1.0, 0.0], 5) == [3, 2]  # each prompt has one zero factor


def test_budget_zero_and_empty():
    assert alloc([0.5, 0.25], [1.0, 1.0], 0) == [0, 0]
    assert alloc([], [], 0) == []
    out = gvm_allocation(t([0.5]), t([1.0]), 3)
    assert out.dtype == torch.long and out.tolist() == [3]


# ------------------------------------------------------------------ property: exact total


@settings(max_examples=60, deadline=None)
@given(data=st.data(), size=st.integers(1, 40), budget=st.integers(0, 2000))
def test_sums_to_budget(data, size, budget):
    rate = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
    p = data.draw(st.lists(rate, min_size=size, max_size=size))
    g = data.draw(st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1e3)), min_size=size, max_size=size))
    out = gvm_allocation(t(p), t(g), budget)
    assert out.dtype == torch.long and out.shape == (size,)
    assert int(out.sum()) == budget
    assert (out >= 0).all()
    live = [pi > 0 and gi > 0 for pi, gi in zip(p, g)]
    if any(live) and budget > 0:
        # non-fallback allocations never give samples to a zero-weight prompt (unless its weight underflowed)
        assert all(n == 0 for n, ok in zip(out.tolist(), live) if not ok)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("p", "g", "budget", "match"),
    [
        ([0.5, -0.1], [1.0, 1.0], 4, "accept_rates"),
        ([0.5, 1.5], [1.0, 1.0], 4, "accept_rates"),
        ([0.5, float("nan")], [1.0, 1.0], 4, "accept_rates"),
        ([0.5, 0.5], [1.0, -2.0], 4, "grad_norms"),
        ([0.5, 0.5], [1.0, float("inf")], 4, "grad_norms"),
        ([0.5, 0.5], [1.0], 4, "same length"),
        ([0.5, 0.5], [1.0, 1.0], -1, "budget=-1"),
        ([], [], 3, "0 prompts"),
    ],
)
def test_errors(p, g, budget, match):
    with pytest.raises(ValueError, match=match):
        gvm_allocation(t(p), t(g), budget)


def test_errors_types():
    with pytest.raises(ValueError, match="budget=2.5"):
        gvm_allocation(t([0.5]), t([1.0]), 2.5)
    with pytest.raises(ValueError, match="alpha=-1"):
        gvm_allocation(t([0.5]), t([1.0]), 2, alpha=-1.0)
    with pytest.raises(ValueError, match="1-D"):
        gvm_allocation(t([[0.5]]), t([[1.0]]), 2)
