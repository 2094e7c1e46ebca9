"""VADE functional core (rlkit.functional.vade): decay, update, scores and posterior stats against hand-computed
numbers, the decay's composition law, the update's fixed point, the score rankings, and the errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkit.functional import vade_decay, vade_posterior_stats, vade_scores, vade_update


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


# ------------------------------------------------------------------ global (slow) decay


def test_global_decay_by_hand():
    # prompt 0, Δ = 2, lam 0.5: alpha = 1 + 0.5^2 (3 - 1) = 1.5, beta = 1 + 0.25 (1 - 1) = 1 ; prompt 1, Δ = 0: unchanged
    a, b = vade_decay(t(3.0, 4.0), t(1.0, 2.0), torch.tensor([2, 0]), lam_global=0.5)
    assert a.tolist() == [1.5, 4.0] and b.tolist() == [1.0, 2.0]
    # prior (2, 1), Δ = 1 (python int, broadcast), lam 0.9: alpha = 2 + 0.9 (5 - 2) = 4.7, beta = 1 + 0.9 (3 - 1) = 2.8
    a, b = vade_decay(t(5.0), t(3.0), 1, lam_global=0.9, prior=(2.0, 1.0))
    assert a.tolist() == pytest.approx([4.7]) and b.tolist() == pytest.approx([2.8])
    # a below the prior moves up toward it: alpha = 1 + 0.5 (0.5 - 1) = 0.75
    assert vade_decay(t(0.5), t(1.0), 1, lam_global=0.5)[0].tolist() == [0.75]


def test_global_decay_identity_cases_and_widening():
    a, b = t(5.0, 0.3), t(3.0, 7.0)
    # Δ = 0, or lam 1: no decay, bit for bit (1 + 1 * (0.3 - 1) would give 0.30000000000000004)
    for out in (vade_decay(a, b, 0), vade_decay(a, b, 7, lam_global=1.0), vade_decay(a, b, torch.tensor([0, 0]))):
        assert out[0].tolist() == a.tolist() and out[1].tolist() == b.tolist()
    # (9, 3) -> Δ = 1, lam 0.5 -> (1 + 0.5 * 8, 1 + 0.5 * 2) = (5, 2): mean 0.75 -> 5/7 (still > 1/2),
    # var 27 / (144 * 13) = 0.0144 -> 10 / (49 * 8) = 0.0255 (wider)
    a, b = vade_decay(t(9.0), t(3.0), 1, lam_global=0.5)
    assert a.tolist() == [5.0] and b.tolist() == [2.0]
    mean, var = vade_posterior_stats(a, b)
    assert mean.item() == pytest.approx(5 / 7) and var.item() == pytest.approx(10 / 392)
    assert var.item() > 27 / 1872
    # a huge Δ forgets everything: the prior
    assert vade_decay(t(9.0), t(3.0), 10_000, lam_global=0.9)[0].tolist() == [1.0]


@settings(max_examples=40, deadline=None)
@given(st.floats(0.1, 50), st.floats(0.1, 50), st.integers(0, 20), st.integers(0, 20), st.floats(0.5, 1.0))
def test_global_decay_composes(a, b, d1, d2, lam):
    once = vade_decay(t(a), t(b), d1 + d2, lam_global=lam)
    twice = vade_decay(*vade_decay(t(a), t(b), d1, lam_global=lam), d2, lam_global=lam)
    assert torch.allclose(once[0], twice[0]) and torch.allclose(once[1], twice[1])
    mean0, _ = vade_posterior_stats(t(a), t(b))                      # the mean keeps its side of the prior's 1/2
    mean1, _ = vade_posterior_stats(*once)
    assert (mean0.item() - 0.5) * (mean1.item() - 0.5) >= -1e-12


# ------------------------------------------------------------------ local (fast) decay with evidence


def test_local_update_by_hand():
    # alpha = 0.9 * 3 + 0.1 * 1 + 2 = 4.8 ; beta = 0.9 * 2 + 0.1 * 1 + 0.5 = 2.4 (fractional failures)
    a, b = vade_update(t(3.0), t(2.0), t(2.0), t(0.5), lam_local=0.9)
    assert a.tolist() == pytest.approx([4.8]) and b.tolist() == pytest.approx([2.4])
    # rewards [1, 0.5, 0, 0] as fractional successes: s = 1.5, f = 4 - 1.5 = 2.5
    #   alpha = 2.7 + 0.1 + 1.5 = 4.3 ; beta = 1.8 + 0.1 + 2.5 = 4.4
    a, b = vade_update(t(3.0), t(2.0), t(1.5), t(2.5))
    assert a.tolist() == pytest.approx([4.3]) and b.tolist() == pytest.approx([4.4])
    # lam 0: only the prior plus the new evidence, (0 + 1 + 1, 0 + 1 + 1) ; lam 1: plain counting, (3 + 1, 2 + 1)
    a, b = vade_update(t(3.0), t(2.0), t(1.0), t(1.0), lam_local=0.0)
    assert a.tolist() == [2.0] and b.tolist() == [2.0]
    a, b = vade_update(t(3.0), t(2.0), t(1.0), t(1.0), lam_local=1.0)
    assert a.tolist() == [4.0] and b.tolist() == [3.0]


def test_group_of_one_updates_normally():
    # s + f = 1 from the prior: alpha = 0.9 + 0.1 + 1 = 2, beta = 0.9 + 0.1 + 0 = 1
    # (the MoPPS reference's "... if rollout.n > 1 else 8" would give (8, 8))
    a, b = vade_update(t(1.0, 1.0), t(1.0, 1.0), t(1.0, 0.0), t(0.0, 1.0))
    assert a.tolist() == pytest.approx([2.0, 1.0]) and b.tolist() == pytest.approx([1.0, 2.0])


def test_repeated_updates_reach_the_fixed_point():
    # constant evidence s = 3, f = 1, lam 0.9: alpha* = a0 + s / (1 - lam) = 1 + 30 = 31, beta* = 1 + 10 = 11
    a, b = t(1.0), t(1.0)
    for _ in range(400):
        a, b = vade_update(a, b, t(3.0), t(1.0), lam_local=0.9)
    assert a.item() == pytest.approx(31.0) and b.item() == pytest.approx(11.0)
    a, b = vade_update(a, b, t(3.0), t(1.0), lam_local=0.9)            # a fixed point stays put
    assert a.item() == pytest.approx(31.0) and b.item() == pytest.approx(11.0)


def test_outputs_are_float64():
    a, b = vade_update(torch.ones(2), torch.ones(2), torch.ones(2), torch.zeros(2))
    assert a.dtype == b.dtype == torch.float64
    assert vade_decay(torch.ones(2), torch.ones(2), 1)[0].dtype == torch.float64
    assert vade_scores(torch.full((2,), 0.5)).dtype == torch.float64


# ------------------------------------------------------------------ information-gain scores


def test_scores_by_hand():
    p = t(0.0, 0.25, 0.5, 1.0)
    assert vade_scores(p).tolist() == [0.0, 0.1875, 0.25, 0.0]                      # p(1-p): 0.25 * 0.75 = 0.1875
    assert vade_scores(p, kind="knapsack").tolist() == [0.0, 0.140625, 0.125, 0.0]  # p(1-p)^2: 0.25 * 0.5625
    # 1 - p^4 - (1-p)^4: at 0.25, 1 - 1/256 - 81/256 = 174/256 ; at 0.5, 1 - 2/16 = 0.875
    assert vade_scores(p, kind="nondegenerate", group_size=4).tolist() == pytest.approx([0, 174 / 256, 0.875, 0])
    # G = 1: 1 - p - (1 - p) = 0, one completion never varies
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert vade_scores(grid, kind="nondegenerate", group_size=1).tolist() == [0.0] * 101


def test_knapsack_peaks_at_one_third():
    # d/dp p(1-p)^2 = (1-p)(1-3p) = 0 at p = 1/3, value 1/3 * 4/9 = 4/27
    grid = torch.linspace(0, 1, 3001, dtype=torch.float64)
    scores = vade_scores(grid, kind="knapsack")
    assert grid[scores.argmax()].item() == pytest.approx(1 / 3, abs=1e-3)
    assert scores.max().item() == pytest.approx(4 / 27)
    assert vade_scores(t(0.2), kind="knapsack") > vade_scores(t(0.8), kind="knapsack")   # not symmetric


def test_rankings_differ_between_variance_and_knapsack():
    draws = t(0.62, 0.91, 0.18, 0.55)
    # variance: 0.62 * 0.38 = 0.2356, 0.91 * 0.09 = 0.0819, 0.18 * 0.82 = 0.1476, 0.55 * 0.45 = 0.2475 -> top-2 [3, 0]
    # knapsack: 0.2356 * 0.38 = 0.0895, 0.0819 * 0.09 = 0.0074, 0.1476 * 0.82 = 0.1210, 0.2475 * 0.45 = 0.1114
    #           -> top-2 [2, 3]
    assert vade_scores(draws).topk(2).indices.tolist() == [3, 0]
    assert vade_scores(draws, kind="knapsack").topk(2).indices.tolist() == [2, 3]
    nd = vade_scores(draws, kind="nondegenerate", group_size=8)
    assert nd.argsort().tolist() == vade_scores(draws).argsort().tolist()           # same ranking as variance


def test_posterior_stats():
    mean, var = vade_posterior_stats(t(2.0, 1.0), t(6.0, 1.0))
    # (2, 6): 2/8 = 0.25, 12 / (64 * 9) ; (1, 1) uniform: 1/2, 1 / (4 * 3) = 1/12
    assert mean.tolist() == [0.25, 0.5] and var.tolist() == pytest.approx([12 / 576, 1 / 12])


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("call", "match"), [
    (lambda: vade_scores(t(0.5), kind="entropy"), "kind='entropy' is not valid; choose one of"),
    (lambda: vade_scores(t(0.5), kind="nondegenerate"), "needs group_size"),
    (lambda: vade_scores(t(0.5), kind="nondegenerate", group_size=0), "group_size=0 must be an integer >= 1"),
    (lambda: vade_scores(t(0.5, 1.5)), r"p must lie in \[0, 1\], got 1.5"),
    (lambda: vade_scores(t(float("nan"))), r"p must lie in \[0, 1\], got nan"),
    (lambda: vade_update(t(0.0), t(1.0), t(1.0), t(0.0)), "alpha must be finite and > 0.*got 0.0"),
    (lambda: vade_posterior_stats(t(1.0), t(-2.0)), "beta must be finite and > 0.*got -2.0"),
    (lambda: vade_decay(t(1.0, 2.0), t(1.0), 1), r"alpha \(2,\) and beta \(1,\) must have the same shape"),
    (lambda: vade_decay(t(1.0), t(1.0), 1, lam_global=0), r"lam_global=0 must lie in \(0, 1\]"),
    (lambda: vade_decay(t(1.0), t(1.0), 1, lam_global=1.01), r"lam_global=1.01 must lie in \(0, 1\]"),
    (lambda: vade_update(t(1.0), t(1.0), t(1.0), t(0.0), lam_local=1.5), r"lam_local=1.5 must lie in \[0, 1\]"),
    (lambda: vade_update(t(1.0), t(1.0), t(1.0), t(0.0), lam_local=-0.1), r"lam_local=-0.1 must lie in \[0, 1\]"),
    (lambda: vade_decay(t(1.0), t(1.0), -1), "steps_unseen must be integers >= 0, got -1"),
    (lambda: vade_decay(t(1.0), t(1.0), 1.5), "steps_unseen must be integers >= 0.*got 1.5"),
    (lambda: vade_decay(t(1.0), t(1.0), t(1.0)), "steps_unseen must be integers >= 0.*got dtype torch.float64"),
    (lambda: vade_decay(t(1.0, 1.0), t(1.0, 1.0), torch.tensor([1, 2, 3])), r"steps_unseen \(3,\) must be one int"),
    (lambda: vade_update(t(1.0), t(1.0), t(-1.0), t(0.0)), "successes must be finite and >= 0, got -1.0"),
    (lambda: vade_update(t(1.0), t(1.0), t(1.0, 1.0), t(0.0)), r"successes \(2,\) must have the shape of alpha"),
    (lambda: vade_update(t(1.0), t(1.0), t(1.0), t(0.0), prior=(0.0, 1.0)), r"prior=\(0.0, 1.0\) must be two"),
])
def test_errors_name_the_bad_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
