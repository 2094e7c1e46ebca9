"""VADE functional core (rlkit.functional.vade): decay, update and scores against hand-computed numbers."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.functional import vade_decay, vade_posterior_stats, vade_scores, vade_update


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_global_decay_by_hand():
    # a = 1 + 0.5^2 (3 - 1) = 1.5 ; b = 1 + 0.25 (1 - 1) = 1 ; second prompt Δ = 0 unchanged
    a, b = vade_decay(t(3.0, 4.0), t(1.0, 2.0), torch.tensor([2, 0]), lam_global=0.5)
    assert a.tolist() == [1.5, 4.0] and b.tolist() == [1.0, 2.0]
    # prior (2, 1): a = 2 + 0.9 (5 - 2) = 4.7, b = 1 + 0.9 (3 - 1) = 2.8
    a, b = vade_decay(t(5.0), t(3.0), 1, lam_global=0.9, prior=(2.0, 1.0))
    assert a.tolist() == pytest.approx([4.7]) and b.tolist() == pytest.approx([2.8])
    assert vade_decay(t(5.0), t(3.0), 7, lam_global=1.0)[0].tolist() == [5.0]       # lam 1: no decay


@settings(max_examples=40, deadline=None)
@given(st.floats(0.1, 50), st.floats(0.1, 50), st.integers(0, 20), st.integers(0, 20), st.floats(0.5, 1.0))
def test_global_decay_composes(a, b, d1, d2, lam):
    once = vade_decay(t(a), t(b), d1 + d2, lam_global=lam)
    twice = vade_decay(*vade_decay(t(a), t(b), d1, lam_global=lam), d2, lam_global=lam)
    assert torch.allclose(once[0], twice[0]) and torch.allclose(once[1], twice[1])
    mean0, _ = vade_posterior_stats(t(a), t(b))                      # the mean keeps its side of the prior's 1/2
    mean1, _ = vade_posterior_stats(*once)
    assert (mean0.item() - 0.5) * (mean1.item() - 0.5) >= -1e-12


def test_local_update_by_hand_and_fixed_point():
    # a = 0.9 * 3 + 0.1 * 1 + 2 = 4.8 ; b = 0.9 * 2 + 0.1 * 1 + 0.5 = 2.4 (fractional failures)
    a, b = vade_update(t(3.0), t(2.0), t(2.0), t(0.5), lam_local=0.9)
    assert a.tolist() == pytest.approx([4.8]) and b.tolist() == pytest.approx([2.4])
    # a group of one completion updates normally (MoPPS's n = 1 bug would give 8, 8)
    a, b = vade_update(t(1.0), t(1.0), t(1.0), t(0.0), lam_local=0.9)
    assert a.tolist() == pytest.approx([2.0]) and b.tolist() == pytest.approx([1.0])
    # constant evidence s = 3 per step converges to a0 + s / (1 - lam) = 1 + 30 = 31
    a, b = t(1.0), t(1.0)
    for _ in range(400):
        a, b = vade_update(a, b, t(3.0), t(1.0), lam_local=0.9)
    assert a.item() == pytest.approx(31.0) and b.item() == pytest.approx(11.0)
    a, b = vade_update(t(3.0), t(2.0), t(1.0), t(1.0), lam_local=0.0)        # lam 0: only the new evidence
    assert a.tolist() == [2.0] and b.tolist() == [2.0]


def test_scores_by_hand():
    p = t(0.0, 0.25, 0.5, 1.0)
    assert vade_scores(p).tolist() == [0.0, 0.1875, 0.25, 0.0]                    # p(1-p)
    assert vade_scores(p, kind="knapsack").tolist() == [0.0, 0.140625, 0.125, 0.0]  # p(1-p)^2
    # 1 - p^4 - (1-p)^4 at 0.25: 1 - 1/256 - 81/256 = 174/256
    assert vade_scores(p, kind="nondegenerate", group_size=4).tolist() == pytest.approx([0, 174 / 256, 0.875, 0])
    assert vade_scores(p, kind="nondegenerate", group_size=1).tolist() == [0.0] * 4   # one sample never varies
    grid = torch.linspace(0, 1, 3001, dtype=torch.float64)
    assert grid[vade_scores(grid, kind="knapsack").argmax()].item() == pytest.approx(1 / 3, abs=1e-3)


def test_rankings_differ_between_variance_and_knapsack():
    draws = t(0.62, 0.91, 0.18, 0.55)
    # variance: [0.2356, 0.0819, 0.1476, 0.2475] -> top-2 [3, 0]
    # knapsack: [0.0895, 0.0074, 0.1210, 0.1114] -> top-2 [2, 3]
    assert vade_scores(draws).topk(2).indices.tolist() == [3, 0]
    assert vade_scores(draws, kind="knapsack").topk(2).indices.tolist() == [2, 3]
    nd = vade_scores(draws, kind="nondegenerate", group_size=8)
    assert nd.argsort().tolist() == vade_scores(draws).argsort().tolist()           # same ranking as variance


def test_posterior_stats():
    mean, var = vade_posterior_stats(t(2.0), t(6.0))        # 2/8 = 0.25 ; 12 / (64 * 9) = 0.0208333
    assert mean.tolist() == [0.25] and var.tolist() == pytest.approx([12 / 576])


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="kind='entropy'"):
        vade_scores(t(0.5), kind="entropy")
    with pytest.raises(ValueError, match="needs group_size"):
        vade_scores(t(0.5), kind="nondegenerate")
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        vade_scores(t(1.5))
    with pytest.raises(ValueError, match="alpha and beta must be finite and > 0"):
        vade_update(t(0.0), t(1.0), t(1.0), t(0.0))
    with pytest.raises(ValueError, match="lam_global=0"):
        vade_decay(t(1.0), t(1.0), 1, lam_global=0)
    with pytest.raises(ValueError, match="lam_local=1.5"):
        vade_update(t(1.0), t(1.0), t(1.0), t(0.0), lam_local=1.5)
    with pytest.raises(ValueError, match="steps_unseen"):
        vade_decay(t(1.0), t(1.0), -1)
    with pytest.raises(ValueError, match="successes and failures"):
        vade_update(t(1.0), t(1.0), t(-1.0), t(0.0))
    with pytest.raises(ValueError, match="prior"):
        vade_update(t(1.0), t(1.0), t(1.0), t(0.0), prior=(0.0, 1.0))
