"""max@k (rlkit.functional.max_at_k): hand-computed numbers, brute-force subset enumeration, exact unbiasedness."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlkit.functional.max_at_k import (
    MAX_AT_K_BASELINES,
    max_at_k_advantages,
    max_at_k_estimate,
    max_at_k_offpolicy_rewards,
    max_at_k_rewards,
    pass_at_k,
)


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def close(actual, expected, tol=1e-12):
    torch.testing.assert_close(actual, t(expected), atol=tol, rtol=0)


# ------------------------------------------------------------ brute force over subsets (independent of the module)

def brute_tilde(r, k):
    """r~_i = (1/C(n,k)) sum_{|S|=k, S∋i} max_S r."""
    subsets = list(itertools.combinations(range(len(r)), k))
    return [sum(max(r[j] for j in s) for s in subsets if i in s) / len(subsets) for i in range(len(r))]


def brute_loo1(r, k):
    """r~_i - (1/C(n,k)) sum_{S∋i} max_{S minus i} r (max over an empty set = 0)."""
    subsets = list(itertools.combinations(range(len(r)), k))
    second = [sum(max([r[j] for j in s if j != i], default=0.0) for s in subsets if i in s) / len(subsets)
              for i in range(len(r))]
    return [a - b for a, b in zip(brute_tilde(r, k), second)]


def brute_estimate(r, k):
    """Average of max over all k-subsets."""
    subsets = list(itertools.combinations(r, k))
    return sum(max(s) for s in subsets) / len(subsets)


def brute_offpolicy(r, d, k):
    """(1/C(n,k)) sum_{S∋i} (1 + sum_{j in S} d_j) max_S r."""
    subsets = list(itertools.combinations(range(len(r)), k))
    return [sum((1 + sum(d[j] for j in s)) * max(r[j] for j in s) for s in subsets if i in s) / len(subsets)
            for i in range(len(r))]


R4 = [0.0, 1.0, 0.5, 0.2]


# --------------------------------------------------------------------------------------------- r~

def test_hand_computed_group_n4_k2():
    # C(4,2) = 6 pairs, max: (0,1)=1 (0,2)=.5 (0,3)=.2 (1,2)=1 (1,3)=1 (2,3)=.5
    # r~ = [(1+.5+.2)/6, (1+1+1)/6, (.5+1+.5)/6, (.2+1+.5)/6]
    expected = [1.7 / 6, 3 / 6, 2 / 6, 1.7 / 6]
    close(max_at_k_rewards(t(R4), ids([0, 0, 0, 0]), 2), expected)
    close(t(brute_tilde(R4, 2)), expected)


def test_mixed_group_sizes_non_contiguous_ids():
    # group 7: [0.3, 0.9, 0.1] (n=3), group 2: R4 permuted (n=4), group 11: [0.6, 0.4] (n=2); k = 2, interleaved
    groups = [7, 2, 11, 7, 2, 2, 11, 7, 2]
    rewards = [0.3, 0.5, 0.6, 0.9, 0.0, 1.0, 0.4, 0.1, 0.2]
    # group 7 pairs (.3,.9)=.9 (.3,.1)=.3 (.9,.1)=.9 -> [1.2/3, 1.8/3, 1.2/3]; group 11: both get max = .6
    expected = [1.2 / 3, 2 / 6, 0.6, 1.8 / 3, 1.7 / 6, 3 / 6, 0.6, 1.2 / 3, 1.7 / 6]
    out = max_at_k_rewards(t(rewards), ids(groups), 2)
    close(out, expected)
    for gid in set(groups):  # and group by group against subset enumeration
        idx = [i for i, g in enumerate(groups) if g == gid]
        close(out[idx], brute_tilde([rewards[i] for i in idx], 2))


def test_dtype_follows_rewards():
    out = max_at_k_rewards(t(R4, torch.float32), ids([0] * 4), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, t([1.7 / 6, 0.5, 1 / 3, 1.7 / 6], torch.float32))
    assert max_at_k_rewards(torch.tensor([1, 0, 1]), ids([0] * 3), 2).dtype == torch.float32  # int -> fp32


# ------------------------------------------------------------------------------------------- identities

RANDOM = [0.31, 0.05, 0.77, 0.77, 0.12, 0.98, 0.43]  # n = 7 with a tie


@pytest.mark.parametrize("k", range(1, 8))
def test_identities(k):
    n = len(RANDOM)
    out = max_at_k_rewards(t(RANDOM), ids([3] * n), k)
    close(out, brute_tilde(RANDOM, k))
    assert math.isclose(out.sum().item(), k * max_at_k_estimate(RANDOM, k), abs_tol=1e-12)  # sum r~ = k rho
    if k == 1:
        close(out, [x / n for x in RANDOM])  # r~ = r / n
    if k == n:
        close(out, [0.98] * n)  # r~ = max r
    assert abs(out[2] - out[3]).item() < 1e-15  # tied rewards get the same r~


def test_ties_are_order_independent():
    # [1, 1, 0, .5], k=2: pairs (0,1)=1 (0,2)=1 (0,3)=1 (1,2)=1 (1,3)=1 (2,3)=.5 -> r~ = [3, 3, 2.5, 2.5] / 6,
    # whichever tied 1 sorts first
    close(max_at_k_rewards(t([1.0, 1.0, 0.0, 0.5]), ids([0] * 4), 2), [3 / 6, 3 / 6, 2.5 / 6, 2.5 / 6])
    close(max_at_k_rewards(t([1.0, 0.0, 0.5, 1.0]), ids([0] * 4), 2), [3 / 6, 2.5 / 6, 2.5 / 6, 3 / 6])
    # loo1, sorted [0, .5, 1, 1]: (1/6) sum_{j<i} (r_i - r_j) -> 0, .5/6, (1 + .5)/6, (1 + .5 + 0)/6
    close(max_at_k_advantages(t([1.0, 0.0, 0.5, 1.0]), ids([0] * 4), 2, baseline="loo1"),
          [1.5 / 6, 0.0, 0.5 / 6, 1.5 / 6])


@pytest.mark.parametrize("baseline", [b for b in MAX_AT_K_BASELINES if b != "none"])
@pytest.mark.parametrize("k", [2, 3])
def test_all_equal_rewards_give_exactly_zero(baseline, k):
    if baseline == "loo" and k == 3:
        k = 2  # loo needs k <= n - 1
    r = t([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])
    adv = max_at_k_advantages(r, ids([0, 0, 0, 5, 5, 5]), k, baseline=baseline)
    assert torch.equal(adv, torch.zeros(6, dtype=torch.float64))
    close(max_at_k_advantages(r, ids([0, 0, 0, 5, 5, 5]), k, baseline="none"), [k / 3 * 0.1] * 3 + [k / 3 * 0.7] * 3)


# ------------------------------------------------------------------------------------------- baselines

def test_baselines_hand_computed():
    g = ids([0] * 4)
    # loo1: subtract (1/6) sum_{S∋i} max(S\i): for r=1.0 the others are 0,.5,.2 -> 3/6 - .7/6 = 2.3/6
    # (sorted form (1/C) sum_{j<i} (r_i - r_j)): r=.5 -> (.5 + .3)/6; r=.2 -> .2/6; r=0 -> 0
    close(max_at_k_advantages(t(R4), g, 2, baseline="loo1"), [0.0, 2.3 / 6, 0.8 / 6, 0.2 / 6])
    close(max_at_k_advantages(t(R4), g, 2, baseline="loo1"), brute_loo1(R4, 2))
    # loo: r~_i - (2/4) rho_{-i}(3,2); rho of the 3 others = mean of pair maxima
    # r=0: others 1,.5,.2 -> (1+1+.5)/3; r=1: (.5+.2+.5)/3; r=.5: (1+.2+1)/3; r=.2: (1+.5+1)/3
    close(max_at_k_advantages(t(R4), g, 2, baseline="loo"),
          [1.7 / 6 - 2.5 / 6, 3 / 6 - 1.2 / 6, 2 / 6 - 2.2 / 6, 1.7 / 6 - 2.5 / 6])
    # bon_max_mean: mean r = 1.7/4 = .425 -> best gets .575; bon_max_second: 1 - .5
    close(max_at_k_advantages(t(R4), g, 2, baseline="bon_max_mean"), [0, 0.575, 0, 0])
    close(max_at_k_advantages(t(R4), g, 2, baseline="bon_max_second"), [0, 0.5, 0, 0])
    # bon_mean: r~ * 6 = [1.7, 3, 2, 1.7], mean 8.4/24 = .35, devs [-1/15, .15, -1/60, -1/15]
    # Bessel var = (2/225 + .0225 + 1/3600) / 3 = .0316667 / 3 = .0105556, std = .1027402
    dev = [-1 / 15, 0.15, -1 / 60, -1 / 15]
    std = math.sqrt(sum(d * d for d in dev) / 3)
    assert abs(std - 0.1027402) < 1e-6
    close(max_at_k_advantages(t(R4), g, 2), [d / (std + 1e-6) for d in dev])
    close(max_at_k_advantages(t(R4), g, 2, baseline="none"), [1.7 / 6, 3 / 6, 2 / 6, 1.7 / 6])


def test_bon_max_ties_and_no_second():
    g = ids([0] * 4)
    # two maxima both get r_max - mean = 1 - .55, and r_max - .2
    close(max_at_k_advantages(t([1.0, 0.2, 1.0, 0.0]), g, 2, baseline="bon_max_mean"), [0.45, 0, 0.45, 0])
    close(max_at_k_advantages(t([1.0, 0.2, 1.0, 0.0]), g, 2, baseline="bon_max_second"), [0.8, 0, 0.8, 0])


def test_loo1_k1_is_reinforce_and_k_equal_n():
    close(max_at_k_advantages(t(R4), ids([0] * 4), 1, baseline="loo1"), [x / 4 for x in R4])
    close(max_at_k_advantages(t([2.0, 2.0]), ids([0, 0]), 1, baseline="loo1"), [1.0, 1.0])  # no baseline at k=1
    # k = n: max(r) - max(others): only the best is non-zero, 1.0 - 0.5
    close(max_at_k_advantages(t(R4), ids([0] * 4), 4, baseline="loo1"), [0, 0.5, 0, 0])
    assert torch.equal(max_at_k_advantages(t(R4), ids([0] * 4), 4), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_loo1_against_brute_force(k):
    close(max_at_k_advantages(t(RANDOM), ids([1] * 7), k, baseline="loo1"), brute_loo1(RANDOM, k))


# ------------------------------------------------------------------------------------------- off-policy

DELTA = [0.1, -0.15, 0.05, 0.0, 0.12, -0.08, 0.03]


def test_offpolicy_delta_zero_is_onpolicy_and_k1_is_importance_sampling():
    g = ids([0, 0, 0, 0, 4, 4, 4])
    for k in (1, 2, 3):
        torch.testing.assert_close(max_at_k_offpolicy_rewards(t(RANDOM), g, k, torch.zeros(7, dtype=torch.float64)),
                                   max_at_k_rewards(t(RANDOM), g, k), atol=1e-15, rtol=0)
    # k = 1: (1 + d_i) r_i / n, n = 4 and 3
    expected = [(1 + d) * r / n for d, r, n in zip(DELTA, RANDOM, [4, 4, 4, 4, 3, 3, 3])]
    close(max_at_k_offpolicy_rewards(t(RANDOM), g, 1, t(DELTA)), expected)


def test_offpolicy_hand_computed_n3_k2():
    # r = [.2, .9, .5], d = [.1, -.1, .2]; pairs: (0,1): (1+.1-.1)*.9 = .9, (0,2): (1.3)*.5 = .65,
    # (1,2): (1.1)*.9 = .99 -> g = [(.9+.65)/3, (.9+.99)/3, (.65+.99)/3]
    out = max_at_k_offpolicy_rewards(t([0.2, 0.9, 0.5]), ids([0] * 3), 2, t([0.1, -0.1, 0.2]))
    close(out, [1.55 / 3, 1.89 / 3, 1.64 / 3])


@pytest.mark.parametrize("k", range(1, 8))
def test_offpolicy_against_brute_force(k):
    out = max_at_k_offpolicy_rewards(t(RANDOM), ids([9] * 7), k, t(DELTA), clamp_delta=None)
    close(out, brute_offpolicy(RANDOM, DELTA, k))


def test_offpolicy_clamping():
    big = [0.5, -0.9, 0.05, 3.0, 0.12, -0.08, 0.03]
    clamped = [0.2, -0.2, 0.05, 0.2, 0.12, -0.08, 0.03]  # default clamp_delta = 0.2
    close(max_at_k_offpolicy_rewards(t(RANDOM), ids([0] * 7), 3, t(big)), brute_offpolicy(RANDOM, clamped, 3))
    close(max_at_k_offpolicy_rewards(t(RANDOM), ids([0] * 7), 3, t(big), clamp_delta=0.0), brute_tilde(RANDOM, 3))


# ----------------------------------------------------------------------------------------- evaluation

def test_pass_at_k_hand_numbers():
    assert math.isclose(pass_at_k(5, 2, 2), 0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    assert math.isclose(pass_at_k(256, 1, 128), 0.5)  # 1 - C(255,128)/C(256,128) = 1 - 128/256
    assert math.isclose(pass_at_k(8, 3, 4), 1 - 5 / 70)  # C(5,4) = 5, C(8,4) = 70


def test_max_at_k_estimate_hand_numbers_and_brute_force():
    # (1/C(4,2)) (1*.2 + 2*.5 + 3*1) = 4.2/6
    assert math.isclose(max_at_k_estimate(R4, 2), 0.7)
    assert math.isclose(max_at_k_estimate(t(R4), 1), 0.425) and max_at_k_estimate(R4, 4) == 1.0
    for k in range(1, 8):
        assert math.isclose(max_at_k_estimate(RANDOM, k), brute_estimate(RANDOM, k), abs_tol=1e-12)


def test_pass_at_k_equals_max_at_k_for_binary_rewards():
    for n, c in itertools.product(range(1, 9), range(9)):
        if c <= n:
            binary = [1.0] * c + [0.0] * (n - c)
            for k in range(1, n + 1):
                assert math.isclose(pass_at_k(n, c, k), max_at_k_estimate(binary, k), abs_tol=1e-12)
                assert math.isclose(pass_at_k(n, c, k), brute_estimate(binary, k), abs_tol=1e-12)


# --------------------------------------------------------------------------------- exact unbiasedness

OUTCOME_REWARDS = [0.0, 0.3, 1.0]
THETA = [0.4, -0.3, 0.1]


def exact_gradients(baseline, n=3, k=2):
    """(E[sum_i A_i grad log pi(y_i)] over all n-tuples, grad max@k(theta)) for a 3-outcome softmax policy."""
    theta = t(THETA).requires_grad_(True)
    pi = torch.softmax(theta, 0)
    true_value = sum(pi[list(ys)].prod() * max(OUTCOME_REWARDS[y] for y in ys)
                     for ys in itertools.product(range(3), repeat=k))
    true_grad, = torch.autograd.grad(true_value, theta)
    p = pi.detach()
    tuples = list(itertools.product(range(3), repeat=n))  # all 27 ordered samples, one group each
    ys = ids([y for tup in tuples for y in tup])
    adv = max_at_k_advantages(t(OUTCOME_REWARDS)[ys], torch.arange(len(tuples)).repeat_interleave(n), k,
                              baseline=baseline)
    score = torch.eye(3, dtype=torch.float64)[ys] - p  # grad_theta log softmax(theta)[y] = onehot(y) - pi
    prob = p[ys].view(len(tuples), n).prod(1).repeat_interleave(n)  # probability of the sample's tuple
    return (prob[:, None] * adv[:, None] * score).sum(0), true_grad


@pytest.mark.parametrize("baseline", ["loo1", "none", "loo"])
def test_estimator_is_exactly_unbiased(baseline):
    estimate, true_grad = exact_gradients(baseline)
    assert true_grad.abs().max() > 0.05
    torch.testing.assert_close(estimate, true_grad, atol=1e-10, rtol=0)


def test_bon_mean_is_biased():
    estimate, true_grad = exact_gradients("bon_mean")
    cosine = torch.nn.functional.cosine_similarity(estimate, true_grad, dim=0).item()
    scale = (estimate.norm() / true_grad.norm()).item()
    # here z-scoring rotates the exact gradient (cosine .9913) and more than doubles its norm (x 2.206)
    assert (estimate - true_grad).abs().max() > 0.05
    assert cosine < 0.995 and scale > 2.0


# ------------------------------------------------------------------------------------------------ errors

def test_errors():
    r, g = t(R4), ids([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"k=3 is larger than group 0's size n=2"):
        max_at_k_rewards(r, g, 3)
    with pytest.raises(ValueError, match=r"k=0 must be an integer >= 1"):
        max_at_k_advantages(r, g, 0)
    with pytest.raises(ValueError, match=r"baseline='mean'.*'bon_mean'.*'loo1'.*'none'"):
        max_at_k_advantages(r, g, 1, baseline="mean")
    with pytest.raises(ValueError, match=r"'loo' needs k <= n - 1, but k=2 and group 0's size is n=2"):
        max_at_k_advantages(r, g, 2, baseline="loo")
    with pytest.raises(ValueError, match=r"k=5 is larger than group"):
        max_at_k_offpolicy_rewards(r, g, 5, torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        max_at_k_rewards(t([0.1, float("nan")]), ids([0, 0]), 1)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="k=5 is larger than the number of rewards n=4"):
        max_at_k_estimate(R4, 5)
