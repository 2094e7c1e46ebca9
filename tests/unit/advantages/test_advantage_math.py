"""Hand-computed checks of rlkit.functional.advantages (BNPO, RLOO, REINFORCE++, whitening, GAE, value loss, KL).

Every expected number is worked out in the comments / with ``math`` in the test, never by the code under test.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlkit.functional import advantages as A

NAN = float("nan")
CAP = 1e6


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, t(expected), **kw)


def beta_pdf(p, a, b):
    return math.exp((a - 1) * math.log(p) + (b - 1) * math.log(1 - p)
                    - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))


# ------------------------------------------------------------------------------------------- BNPO

# 3 prompts x 4 binary rewards, ids unsorted / non-contiguous, rows interleaved:
#   group 7: 1,0,0,0 -> p = 1/4;  group 2: 1,1,0,0 -> p = 1/2;  group 5: 0,1,1,0 -> p = 1/2
HAND_R = [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
HAND_G = [7, 2, 5, 7, 2, 5, 5, 7, 2, 7, 2, 5]


def hand_bnpo_expected():
    # mu = (1/4 + 1/2 + 1/2)/3 = 5/12; deviations -1/6, 1/12, 1/12 -> s2 = (1/36 + 2/144)/2 = 1/48
    # c = (5/12)(7/12)*48 - 1 = 35/3 - 1 = 32/3; a = c*5/12 = 40/9, b = c*7/12 = 56/9
    # alpha = 1 + 40/27 = 67/27 = 2.481481, beta = 1 + 56/27 = 83/27 = 3.074074
    alpha, beta = 67 / 27, 83 / 27
    w_q = {0.25: 1 / beta_pdf(0.25, alpha, beta), 0.5: 1 / beta_pdf(0.5, alpha, beta)}
    assert abs(w_q[0.25] - 0.6956826) < 1e-6 and abs(w_q[0.5] - 0.5776531) < 1e-6  # pdf 1.437437, 1.731143
    p = {7: 0.25, 2: 0.5, 5: 0.5}
    return [w_q[p[g]] * (r - p[g]) for r, g in zip(HAND_R, HAND_G)]


def test_bnpo_hand_example():
    expected = hand_bnpo_expected()
    adv = A.beta_norm_advantages(t(HAND_R), ids(HAND_G))
    close(adv, expected)
    assert abs(adv[0].item() - 0.75 * 0.6956826) < 1e-6  # row 0: group 7, r = 1 -> 0.521762
    mu, var, n = A.beta_norm_moments(t(HAND_R), ids(HAND_G))
    assert (n, pytest.approx(mu), pytest.approx(var)) == (3, 5 / 12, 1 / 48)
    alpha, beta = A.beta_norm_params(5 / 12, 1 / 48)
    assert (alpha, beta) == (pytest.approx(67 / 27), pytest.approx(83 / 27))


def test_bnpo_affine_map_and_fp32():
    # rewards in [-1, 1] with r_min = -1: r~ = (r + 1)/2 reproduces the {0, 1} example (A in r~ units)
    r = [2.0 * x - 1.0 for x in HAND_R]
    adv = A.beta_norm_advantages(t(r), ids(HAND_G), r_min=-1.0, r_max=1.0)
    close(adv, hand_bnpo_expected())
    adv32 = A.beta_norm_advantages(t(HAND_R, torch.float32), ids(HAND_G))
    assert adv32.dtype == torch.float32
    torch.testing.assert_close(adv32, t(hand_bnpo_expected(), torch.float32))


def test_bnpo_alpha_beta_one_is_group_mean_baseline():
    # groups of 2: p = 0, 1, 1/2 -> mu = 1/2, s2 = (1/4 + 1/4 + 0)/2 = 1/4 = mu(1-mu) -> c = 0 -> alpha = beta = 1
    r, g = [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 2, 2]
    close(A.beta_norm_advantages(t(r), ids(g)), [0, 0, 0, 0, 0.5, -0.5])
    # forced: moments (0.5, 0.3): c = 0.25/0.3 - 1 < 0 -> a, b < 0 -> alpha = beta = 1 -> A = r - p
    r, g = [1, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]
    close(A.beta_norm_advantages(t(r), ids(g), moments=(0.5, 0.3)),
          [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75])
    assert A.beta_norm_params(0.5, 0.3) == (1.0, 1.0)


def test_bnpo_alpha_beta_one_point_five_is_scaled_grpo():
    # p = 1/4, 1/2, 3/4 -> mu = 1/2, s2 = (1/16 + 0 + 1/16)/2 = 1/16; c = (1/4)*16 - 1 = 3 -> a = b = 3/2
    # -> alpha = beta = 1 + 1/2 = 1.5; B(1.5, 1.5) = pi/8 -> A = (pi/8)(r - p)/sigma_pop(group)
    groups = {0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [1, 1, 1, 0]}
    r = [x for k in groups for x in groups[k]]
    g = [k for k in groups for _ in groups[k]]
    expected = [math.pi / 8 * (x - statistics.mean(groups[k])) / statistics.pstdev(groups[k]) for x, k in zip(r, g)]
    assert abs(expected[0] - 0.75 * 0.9068997) < 1e-6  # sigma_pop(1/4) = sqrt(3/16): (pi/8)/0.433013 = 0.906900
    assert A.beta_norm_params(0.5, 0.0625) == (pytest.approx(1.5), pytest.approx(1.5))
    close(A.beta_norm_advantages(t(r), ids(g)), expected)
    # forced through moments on a batch whose own moments differ (only the p = 1/4 and 3/4 groups)
    r2, g2 = groups[0] + groups[2], [0] * 4 + [2] * 4
    close(A.beta_norm_advantages(t(r2), ids(g2), moments=(0.5, 0.0625)), expected[:4] + expected[8:])


def test_bnpo_zero_variance_falls_back():
    # every prompt has p = 1/2 -> s2 = 0 (the reference gives NaN) -> alpha = beta = 1 -> A = r - 1/2
    r, g = [1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 2, 2]
    adv = A.beta_norm_advantages(t(r), ids(g))
    close(adv, [0.5, -0.5, -0.5, 0.5, 0.5, -0.5])
    assert A.beta_norm_params(0.5, 0.0) == (1.0, 1.0) and A.beta_norm_params(0.5, 1e-13) == (1.0, 1.0)
    assert A.beta_norm_params(0.0, 0.1) == (1.0, 1.0) and A.beta_norm_params(1.0, 0.1) == (1.0, 1.0)


def test_bnpo_p_hat_zero_or_one_no_nan():
    # p = 0, 1, 1/4, 1/2, 3/4: mu = 1/2, s2 = (1/4 + 1/4 + 1/16 + 0 + 1/16)/4 = 5/32; c = (1/4)(32/5) - 1 = 0.6
    # alpha = beta = 1 + 0.3/3 = 1.1 > 1 -> pdf(0) = pdf(1) = 0 -> w = 1e6, but r - p = 0 there -> A = 0
    groups = [[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    r = [x for grp in groups for x in grp]
    g = [k for k, grp in enumerate(groups) for _ in grp]
    expected = [0.0] * 8 + [(x - sum(groups[k]) / 4) / beta_pdf(sum(groups[k]) / 4, 1.1, 1.1)
                            for x, k in zip(r[8:], g[8:])]
    adv = A.beta_norm_advantages(t(r), ids(g))
    assert torch.isfinite(adv).all()
    close(adv, expected)
    assert (adv[:8] == 0).all()
    # only saturated groups, strongly peaked Beta forced through moments: still finite zeros
    adv = A.beta_norm_advantages(t([0, 0, 1, 1]), ids([0, 0, 1, 1]), moments=(0.5, 0.0625))
    assert torch.equal(adv, t([0.0, 0.0, 0.0, 0.0]))


def test_bnpo_singleton_zero_vs_reference():
    # groups p = 1/4, 1/2, 3/4 (as the 1.5 test) plus group 9 = a single reward 1
    base = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0]
    r, g = base + [1], [0] * 4 + [1] * 4 + [2] * 4 + [9]
    # "zero": singleton A = 0, left out of the moments -> alpha = beta = 1.5 as above
    sig = {0: math.sqrt(3 / 16), 1: 0.5, 2: math.sqrt(3 / 16)}
    p = {0: 0.25, 1: 0.5, 2: 0.75}
    expected = [math.pi / 8 * (x - p[k]) / sig[k] for x, k in zip(base, g)] + [0.0]
    close(A.beta_norm_advantages(t(r), ids(g)), expected)
    assert A.beta_norm_moments(t(r), ids(g))[2] == 3
    # "reference": singleton p = 0 and included: p = 1/4, 1/2, 3/4, 0 -> mu = 3/8,
    # s2 = (1/64 + 1/64 + 9/64 + 9/64)/3 = 5/48; c = (15/64)(48/5) - 1 = 1.25
    # alpha = 1 + 1.25*(3/8)/3 = 1.15625, beta = 1 + 1.25*(5/8)/3 = 1.260417 -> pdf(0) = 0 -> A = 1e6 * (1 - 0)
    mu, var, n = A.beta_norm_moments(t(r), ids(g), singleton="reference")
    assert (n, pytest.approx(mu), pytest.approx(var)) == (4, 3 / 8, 5 / 48)
    adv = A.beta_norm_advantages(t(r), ids(g), singleton="reference")
    assert adv[-1].item() == CAP
    a, b = 1.15625, 1 + 1.25 * 0.625 / 3
    close(adv[:12], [(x - p[k]) / beta_pdf(p[k], a, b) for x, k in zip(base, g)])
    with pytest.raises(ValueError, match="singleton"):
        A.beta_norm_advantages(t(r), ids(g), singleton="raw")


def test_bnpo_one_prompt_and_nan():
    # one prompt: the reference's mu = 0, s2 = 1 -> c = -1 -> alpha = beta = 1 -> A = r - p (p = 1/4)
    close(A.beta_norm_advantages(t([1, 0, 0, 0]), ids([3, 3, 3, 3])), [0.75, -0.25, -0.25, -0.25])
    assert A.beta_norm_moments(t([1, 0, 0, 0]), ids([3, 3, 3, 3])) == (0.0, 1.0, 1)
    # NaN = unscorable: group 0 valid rewards 1, 0, 1 -> p = 2/3; one prompt again -> A = r - p, NaN row 0
    adv = A.beta_norm_advantages(t([1, NAN, 0, 1]), ids([0, 0, 0, 0]))
    close(adv, [1 / 3, 0.0, -2 / 3, 1 / 3])
    # a group left with one valid reward is a singleton -> 0; an all-NaN group -> 0
    adv = A.beta_norm_advantages(t([1, NAN, NAN, NAN, 1, 0]), ids([0, 0, 1, 1, 2, 2]))
    close(adv, [0.0, 0.0, 0.0, 0.0, 0.5, -0.5])


def test_bnpo_range_errors():
    with pytest.raises(ValueError, match=r"1\.5.*\[0\.0, 1\.0\].*r_min/r_max"):
        A.beta_norm_advantages(t([0.0, 1.5]), ids([0, 0]))
    with pytest.raises(ValueError, match="-0.5"):
        A.beta_norm_moments(t([-0.5, 1.0]), ids([0, 0]))
    with pytest.raises(ValueError, match="r_min < r_max"):
        A.beta_norm_advantages(t([0.0, 1.0]), ids([0, 0]), r_min=1.0, r_max=1.0)
    with pytest.raises(ValueError, match="moments"):
        A.beta_norm_params(0.5, -1.0)
    # rounding just past the bound is tolerated and clamped: r~ = 1 -> same as exact 1
    adv = A.beta_norm_advantages(t([1.0 + 1e-9, 0.0]), ids([0, 0]))
    close(adv, [0.5, -0.5])


# ------------------------------------------------------------------------------------------- RLOO


def test_rloo_hand_numbers():
    # group 1 = {1, 0, 0, 1}: A_0 = 1 - mean(0, 0, 1) = 2/3, A_1 = 0 - mean(1, 0, 1) = -2/3
    # group 4 = {2, 5, 11}: A = 2 - 8 = -6, 5 - 6.5 = -1.5, 11 - 3.5 = 7.5
    adv = A.rloo_advantages(t([1, 2, 0, 5, 0, 11, 1]), ids([1, 4, 1, 4, 1, 4, 1]))
    close(adv, [2 / 3, -6.0, -2 / 3, -1.5, -2 / 3, 7.5, 2 / 3])


def test_rloo_singleton_nan_constant():
    # group 0 = {1, NaN, 0}: two valid -> 1 - 0 = 1, 0 - 1 = -1, NaN -> 0; group 5 singleton -> 0; group 2 constant
    adv = A.rloo_advantages(t([1, NAN, 0, 3, 0.1, 0.1, 0.1]), ids([0, 0, 0, 5, 2, 2, 2]))
    close(adv, [1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    assert A.rloo_advantages(t([0.1, 0.1, 0.1], torch.float32), ids([0, 0, 0])).eq(0).all()


# ------------------------------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_hand_numbers():
    # centred: group 0 {1,0,0,1} -> +-.5; group 1 {1,1,1,0} -> .25,.25,.25,-.75; batch mean 0
    # Bessel var = (4*.25 + 3*.0625 + .5625)/7 = 1.75/7 = .25 -> A = x / sqrt(.25 + 1e-8)
    r, g = [1, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]
    s = math.sqrt(0.25 + 1e-8)
    close(A.reinforce_pp_advantages(t(r), ids(g)), [x / s for x in [.5, -.5, -.5, .5, .25, .25, .25, -.75]])


def test_reinforce_pp_token_weighted_and_exclusions():
    # centred .5, -.5, .5, -.5 with 3, 1, 1, 1 valid tokens: token values .5 x4, -.5 x2 -> mean 1/6
    # sum sq = 4 (1/3)^2 + 2 (2/3)^2 = 4/3, Bessel over 6 tokens: var = 4/15
    # row 4: NaN -> 0, row 5: singleton -> 0, both outside the statistics
    r, g = [1, 0, 1, 0, NAN, 1], [0, 0, 1, 1, 1, 2]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    s = math.sqrt(4 / 15 + 1e-8)
    m = 1 / 6
    adv = A.reinforce_pp_advantages(t(r), ids(g), mask)
    close(adv, [(0.5 - m) / s, (-0.5 - m) / s, (0.5 - m) / s, (-0.5 - m) / s, 0.0, 0.0])
    # fewer than 2 valid tokens -> no whitening, the centred values
    one = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)
    close(A.reinforce_pp_advantages(t([1, 0]), ids([0, 0]), one), [0.5, -0.5])


# ------------------------------------------------------------------------------------------ whiten


def test_whiten_hand_numbers():
    # valid 1, 2, 3, 4: mean 2.5, Bessel var = (2.25 + .25 + .25 + 2.25)/3 = 5/3
    x = t([[1.0, 2.0, 100.0], [3.0, 4.0, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    s = math.sqrt(5 / 3 + 1e-8)
    close(A.whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.0], [0.5 / s, 1.5 / s, 0.0]])
    assert abs(1.5 / s - 1.161895) < 1e-6
    close(A.whiten(x, mask, shift_mean=False),
          [[2.5 - 1.5 / s, 2.5 - 0.5 / s, 0.0], [2.5 + 0.5 / s, 2.5 + 1.5 / s, 0.0]])


def test_whiten_fewer_than_two():
    close(A.whiten(t([[5.0, 9.0]]), torch.tensor([[True, False]])), [[5.0, 0.0]])
    close(A.whiten(t([[5.0, 9.0]]), torch.tensor([[False, False]])), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="shape"):
        A.whiten(t([1.0, 2.0]), torch.tensor([[True, True]]))


# --------------------------------------------------------------------------------------------- GAE


def test_gae_hand_example():
    # gamma = .9, lam = .8, gamma*lam = .72
    # row 0, all valid, r = 0, 0, 1, V = .5, .6, .7:
    #   t2: delta = 1 - .7 = .3                     A = .3
    #   t1: delta = 0 + .9*.7 - .6 = .03            A = .03 + .72*.3 = .246
    #   t0: delta = 0 + .9*.6 - .5 = .04            A = .04 + .72*.246 = .21712
    # row 1, right padding (mask 1,1,0; pad reward 7, pad value NaN ignored), r = .2, -1, V = .1, .4:
    #   t1: delta = -1 - .4 = -1.4                  A = -1.4
    #   t0: delta = .2 + .9*.4 - .1 = .46           A = .46 - .72*1.4 = -.548
    # row 2, mask 1,0,1 (tool output in the middle), r = 0, 5, 1, V = .5, 9, .7:
    #   t2: A = .3; t1 masked: skipped, next value .7 and running A .3 carried
    #   t0: delta = 0 + .9*.7 - .5 = .13            A = .13 + .72*.3 = .346
    # row 3: no valid token -> zeros
    rewards = t([[0, 0, 1], [0.2, -1, 7], [0, 5, 1], [1, 1, 1]])
    values = t([[0.5, 0.6, 0.7], [0.1, 0.4, NAN], [0.5, 9, 0.7], [3, 3, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    adv, ret = A.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3], [-0.548, -1.4, 0.0], [0.346, 0.0, 0.3], [0.0, 0.0, 0.0]])
    close(ret, [[0.71712, 0.846, 1.0], [-0.448, -1.0, 0.0], [0.846, 0.0, 1.0], [0.0, 0.0, 0.0]])


def test_gae_gamma_lam_one_is_returns_to_go():
    # gamma = lam = 1: A_t = sum_{s >= t} r_s - V_t, returns = reward-to-go (over valid tokens)
    rewards = t([[0.5, -1.0, 2.0, 0.0], [1.0, 3.0, 9.0, 9.0]])
    values = t([[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    togo = [[1.5, 1.0, 2.0, 0.0], [4.0, 3.0, 0.0, 0.0]]
    adv, ret = A.gae_advantages(rewards, values, mask)
    close(ret, togo)
    close(adv, [[1.4, 0.8, 1.7, -0.4], [3.0, 5.0, 0.0, 0.0]])


def test_gae_validation():
    z = torch.zeros(1, 2)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="gamma"):
        A.gae_advantages(z, z, m, gamma=1.5)
    with pytest.raises(ValueError, match="shape"):
        A.gae_advantages(z, torch.zeros(1, 3), m)


def test_token_rewards_placement():
    # kl_coef .5: row 0 tokens 0,1 valid -> -.05, -.1 + score 1; row 1 empty (NaN score ignored);
    # row 2 tokens 0, 2 valid -> -.35, 0, -.45 + 3
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    out = A.token_rewards(t([1.0, NAN, 3.0]), mask, kl=kl, kl_coef=0.5)
    close(out, [[-0.05, 0.9, 0.0], [0.0, 0.0, 0.0], [-0.35, 0.0, 2.55]])
    close(A.token_rewards(t([1.0, 2.0, 3.0]), mask), [[0, 1, 0], [0, 0, 0], [0, 0, 3]])
    with pytest.raises(ValueError, match="kl"):
        A.token_rewards(t([1.0, 2.0, 3.0]), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="NaN"):
        A.token_rewards(t([NAN, 2.0, 3.0]), mask)


def test_clipped_value_loss_branches():
    # c = .5, V_old = 0:
    #   V = 1,  R = 0: unclipped 1,   clipped V .5 -> .25;  max 1    -> .5
    #   V = .2, R = 1: unclipped .64, inside clip -> .64;   max .64  -> .32
    #   V = .9, R = 1: unclipped .01, clipped V .5 -> .25;  max .25  -> .125 (clipped branch wins)
    v, old, ret = t([[1.0, 0.2, 0.9]]), t([[0.0, 0.0, 0.0]]), t([[0.0, 1.0, 1.0]])
    close(A.clipped_value_loss(v, old, ret, clip=0.5), [[0.5, 0.32, 0.125]])
    close(A.clipped_value_loss(v, old, ret, clip=None), [[0.5, 0.32, 0.005]])
    # only the third token has its clipped term winning the max (the first is clipped too, but loses the max)
    assert A.value_clip_active(v, old, ret, 0.5).tolist() == [[False, False, True]]
    with pytest.raises(ValueError, match=r"clip=0.0 is ambiguous.*clip: null for no clipping"):
        A.clipped_value_loss(v, old, ret, clip=0.0)   # verl: pins V to V_old; elsewhere: off


def test_adaptive_kl_coef():
    # kl .3, target .1: error clip(2) = .2 -> 1 + .2*256/10000 = 1.00512
    assert A.adaptive_kl_coef(0.1, 0.3, 0.1, 10000, 256) == pytest.approx(0.100512)
    # kl .09: error -.1 -> 1 - .1*.0256 = .99744
    assert A.adaptive_kl_coef(0.1, 0.09, 0.1, 10000, 256) == pytest.approx(0.099744)
    # kl 0: error clip(-1) = -.2 -> 1 - .2*.5 = .9
    assert A.adaptive_kl_coef(2.0, 0.0, 6.0, 100, 50) == pytest.approx(1.8)
    with pytest.raises(ValueError, match="target"):
        A.adaptive_kl_coef(0.1, 0.1, 0.0, 100, 1)


def test_reinforce_pp_discounted_hand_numbers():
    # row 0: 3 tokens, score 1; row 1: 2 tokens, score 0; gamma = 0.5
    # returns: row 0 = [0.25, 0.5, 1]; row 1 = [0, 0, -]; valid values 0.25, 0.5, 1, 0, 0: mean 0.35,
    # Bessel var (0.01 + 0.0225 + 0.4225 + 0.1225 + 0.1225) / 4 = 0.175
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ret = A.discounted_returns(A.token_rewards(t([1.0, 0.0]), mask), mask, 0.5)
    close(ret, [[0.25, 0.5, 1.0], [0.0, 0.0, 0.0]])
    adv = A.reinforce_pp_discounted_advantages(t([1.0, 0.0]), mask, gamma=0.5, eps=0.0)
    sd = math.sqrt(0.175)
    close(adv, [[-0.1 / sd, 0.15 / sd, 0.65 / sd], [-0.35 / sd, -0.35 / sd, 0.0]])
    # a masked position inside a row (tool output between model turns) is skipped, not reset: t0 = 0.5 * 1
    inner = torch.tensor([[True, False, True]])
    close(A.discounted_returns(t([[0.0, 0.0, 1.0]]), inner, 0.5), [[0.5, 0.0, 1.0]])
    # an unscorable (NaN) row gets 0 and stays out of the whitening
    adv = A.reinforce_pp_discounted_advantages(t([1.0, NAN]), mask, gamma=0.5, eps=0.0)
    assert adv[1].abs().sum() == 0 and torch.isfinite(adv).all()


def test_reinforce_pp_discounted_matches_verl_on_single_turn_rows():
    # verl compute_reinforce_plus_plus_outcome_advantage, written out independently: backward loop with a reset
    # after every masked position, then masked whitening (unbiased variance, eps 1e-8), times the mask
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (6,), generator=g)
    mask = torch.arange(8)[None, :] < lengths[:, None]                        # right-padded rows
    scores = torch.randn(6, generator=g)
    kl = 0.1 * torch.randn(6, 8, generator=g)
    rewards = A.token_rewards(scores, mask, kl=kl, kl_coef=0.05)
    returns, running = torch.zeros(6, 8), torch.zeros(6)
    for step in reversed(range(8)):
        running = rewards[:, step] + 0.9 * running
        returns[:, step] = running
        running = running * mask[:, step]
    m = mask.float()
    mean = (returns * m).sum() / m.sum()
    var = ((returns - mean) ** 2 * m).sum() / (m.sum() - 1)
    ref = (returns - mean) * torch.rsqrt(var + 1e-8) * m
    ours = A.reinforce_pp_discounted_advantages(scores, mask, gamma=0.9, kl=kl, kl_coef=0.05)
    torch.testing.assert_close(ours, ref)
