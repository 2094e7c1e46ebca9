"""Hand-computed checks of rlkit.functional (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit import functional as F

NAN = float("nan")
EPS = 1e-6


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


# ------------------------------------------------------------------------------------------- GRPO

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1]


def test_grpo_scale_group():
    # group 0: mu = 0.5, deviations +-0.5, sum sq = 1, Bessel var = 1/3, sigma = 0.577350 -> A = +-0.5/0.577351 = +-0.866024
    # group 1: mu = 0.75, dev [.25,.25,.25,-.75], sum sq = 3*.0625 + .5625 = .75, var = .25, sigma = .5
    #          -> A = [.5, .5, .5, -1.5] (divided by .5 + 1e-6)
    adv = F.grpo_advantages(t(REWARDS), ids(GROUPS))
    s0, s1 = math.sqrt(1 / 3) + EPS, 0.5 + EPS
    expected = [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 0.25 / s1, 0.25 / s1, 0.25 / s1, -0.75 / s1]
    torch.testing.assert_close(adv, t(expected))
    assert abs(adv[0].item() - 0.866024) < 1e-5 and abs(adv[7].item() + 1.499997) < 1e-5


def test_grpo_scale_batch():
    # all 8 rewards: five 1s, three 0s, mean .625; sum sq = 5*.375^2 + 3*.625^2 = .703125 + 1.171875 = 1.875
    # Bessel var = 1.875/7 = .267857, sigma_batch = .517549; numerators still use the group means
    adv = F.grpo_advantages(t(REWARDS), ids(GROUPS), scale="batch")
    sb = math.sqrt(1.875 / 7) + EPS
    expected = [0.5 / sb, -0.5 / sb, -0.5 / sb, 0.5 / sb, 0.25 / sb, 0.25 / sb, 0.25 / sb, -0.75 / sb]
    torch.testing.assert_close(adv, t(expected))
    assert abs(adv[0].item() - 0.966091) < 1e-5


def test_grpo_scale_none():
    # r - mu_g: group 0 mu .5, group 1 mu .75
    adv = F.grpo_advantages(t(REWARDS), ids(GROUPS), scale="none")
    torch.testing.assert_close(adv, t([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]))


def test_grpo_singleton_zero_and_raw():
    # group 9 = {2.0} alone; group 4 = {1, 3}: mu 2, dev +-1, Bessel var = 2/1, sigma = 1.414214 -> A = +-0.707107
    rewards, groups = t([2.0, 1.0, 3.0]), ids([9, 4, 4])
    s = math.sqrt(2) + EPS
    zero = F.grpo_advantages(rewards, groups, singleton="zero")
    torch.testing.assert_close(zero, t([0.0, -1 / s, 1 / s]))
    # verl: singleton mu = 0, sigma = 1 -> A = 2 / (1 + 1e-6) = 1.999998
    raw = F.grpo_advantages(rewards, groups, singleton="raw")
    torch.testing.assert_close(raw, t([2 / (1 + EPS), -1 / s, 1 / s]))
    raw_batch = F.grpo_advantages(rewards, groups, singleton="raw", scale="batch")
    assert raw_batch[0].item() == pytest.approx(2 / (1 + EPS))
    raw_none = F.grpo_advantages(rewards, groups, singleton="raw", scale="none")
    torch.testing.assert_close(raw_none, t([2.0, -1.0, 1.0]))


def test_grpo_nan_rewards():
    # valid rewards [1, 0, 1]: mu = 2/3, dev [1/3, -2/3, 1/3], sum sq = 6/9, Bessel var = 1/3, sigma = .577350
    # A = (1/3)/.57735 = .577350, (-2/3)/.57735 = -1.154701; the NaN row gets 0
    adv = F.grpo_advantages(t([1.0, NAN, 0.0, 1.0]), ids([0, 0, 0, 0]))
    s = math.sqrt(1 / 3) + EPS
    torch.testing.assert_close(adv, t([(1 / 3) / s, 0.0, (-2 / 3) / s, (1 / 3) / s]))
    # a group of two whose other member is NaN is a singleton: "zero" -> 0, "raw" -> r/(1+eps)
    adv = F.grpo_advantages(t([NAN, 0.5]), ids([1, 1]), singleton="raw")
    torch.testing.assert_close(adv, t([0.0, 0.5 / (1 + EPS)]))
    assert not torch.isnan(F.grpo_advantages(t([NAN, NAN]), ids([1, 1]))).any()


def test_grpo_unsorted_ids_variable_sizes_match_loop_reference():
    rewards = t([0.3, 1.0, 0.0, 2.0, 0.5, 0.7, 0.1, 0.9, 0.9])
    groups = ids([7, 3, 7, 3, 42, 42, 7, 3, 100])
    adv = F.grpo_advantages(rewards, groups)
    for g in groups.unique():
        rows = groups == g
        r = rewards[rows]
        ref = (r - r.mean()) / (r.std() + EPS) if r.numel() > 1 else torch.zeros_like(r)
        torch.testing.assert_close(adv[rows], ref)
    perm = torch.randperm(len(rewards))
    torch.testing.assert_close(F.grpo_advantages(rewards[perm], groups[perm]), adv[perm])


def test_grpo_constant_group_is_exactly_zero():
    # 0.1 in fp32: the rounded mean may differ from 0.1 by one ulp; all-equal groups must still give A = 0
    adv = F.grpo_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7]), ids([0, 0, 0, 1, 1]))
    assert torch.equal(adv, torch.zeros(5))


@pytest.mark.parametrize("kwargs, word", [({"scale": "grop"}, "group"), ({"singleton": "raw_reward"}, "zero"),
                                          ({"eps": -1.0}, "eps")])
def test_grpo_bad_options(kwargs, word):
    with pytest.raises(ValueError, match=word):
        F.grpo_advantages(t([1.0, 0.0]), ids([0, 0]), **kwargs)


# ------------------------------------------------------------------------------------- aggregation

LOSS = t([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
MASK = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
# L = [2, 0, 4]; per-row masked sums S = [1+2, 0, 9+10+11+12] = [3, 0, 42]


@pytest.mark.parametrize("mode, expected", [
    ("token_mean", 45 / 6),                     # (3 + 42) / (2 + 4) = 7.5
    ("seq_mean_token_mean", (3 / 2 + 42 / 4) / 2),  # (1.5 + 10.5) / 2 non-empty rows = 6.0
    ("seq_mean_token_sum", 45 / 2),             # (3 + 42) / 2 non-empty rows = 22.5
    ("seq_mean_token_sum_norm", 45 / (3 * 4)),  # Dr. GRPO: 45 / (N=3 incl. the empty row * max_len=4) = 3.75
])
def test_aggregate_modes_by_hand(mode, expected):
    assert F.aggregate(LOSS, MASK, mode, max_len=4).item() == pytest.approx(expected)


def test_aggregation_plan_values():
    lengths = ids([2, 0, 4])
    coef, z = F.aggregation_plan(lengths, "seq_mean_token_mean")
    torch.testing.assert_close(coef, torch.tensor([0.5, 0.0, 0.25]))
    assert z == 2.0
    coef, z = F.aggregation_plan(lengths, "token_mean")
    assert z == 6.0 and coef.tolist() == [1.0, 1.0, 1.0]
    assert F.aggregation_plan(lengths, "seq_mean_token_sum_norm", max_len=10)[1] == 30.0


@pytest.mark.parametrize("mode", list(F.AGGREGATION_MODES))
def test_aggregate_all_masked_is_zero(mode):
    loss = torch.full((3, 4), NAN)  # even NaN losses under the mask must not leak
    out = F.aggregate(loss, torch.zeros(3, 4, dtype=torch.bool), mode, max_len=4)
    assert out.item() == 0.0


def test_aggregate_float_weights_and_masked_nan():
    # row 0 weights [1, .5, 0, 0]: S_0 = 1*1 + .5*2 = 2; lengths still count weight > 0 -> L = [2, 0, 4]
    weights = MASK.double()
    weights[0, 1] = 0.5
    loss = LOSS.clone()
    loss[1, 0] = NAN  # masked
    assert F.aggregate(loss, weights, "token_mean").item() == pytest.approx((2 + 42) / 6)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="max_len"):
        F.aggregate(LOSS, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="token_mean"):
        F.aggregate(LOSS, MASK, "token-mean")
    with pytest.raises(ValueError, match="alpha"):  # mode options are forwarded and checked per mode
        F.aggregate(LOSS, MASK, "token_mean", alpha=0.75)


# --------------------------------------------------------------------------------------------- PPO

# row 0: A = +1, ratios [1.1, 1.5, 0.5, 9.0 (masked)]; row 1: A = -1, ratios [1.5, 0.5, 1.1, 5.0]
RATIOS = t([[1.1, 1.5, 0.5, 9.0], [1.5, 0.5, 1.1, 5.0]])
ADV = t([1.0, -1.0])
PPO_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)


def _ppo(**kwargs):
    logprobs = RATIOS.log().requires_grad_(True)
    loss, metrics = F.ppo_clip_loss(logprobs, torch.zeros_like(RATIOS), ADV, PPO_MASK, **kwargs)
    loss.sum().backward()
    return loss.detach(), metrics, logprobs.grad


def test_ppo_clip_values_and_gradients():
    loss, metrics, grad = _ppo()
    # A>0: 1.1 inside -> -1.1; 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); 0.5 -> max(-0.5, -0.8) = -0.5; masked 0
    # A<0: 1.5 -> max(1.5, 1.2) = 1.5; 0.5 -> max(0.5, 0.8) = 0.8 (clipped); 1.1 -> 1.1; 5.0 -> max(5, 1.2) = 5
    torch.testing.assert_close(loss, t([[-1.1, -1.2, -0.5, 0.0], [1.5, 0.8, 1.1, 5.0]]))
    # d(-A*ratio)/dlogp = -A*ratio on unclipped tokens, 0 on clipped and masked ones
    torch.testing.assert_close(grad, t([[-1.1, 0.0, -0.5, 0.0], [1.5, 0.0, 1.1, 5.0]]))
    # 7 valid tokens: high clip 1 (row 0 tok 1), low clip 1 (row 1 tok 1)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 7)
    assert metrics["clip_frac_low"].item() == pytest.approx(1 / 7)
    assert metrics["clip_frac"].item() == pytest.approx(2 / 7)
    assert metrics["dual_clip_frac"].item() == 0.0
    # ratio mean = (1.1 + 1.5 + .5 + 1.5 + .5 + 1.1 + 5) / 7 = 11.2 / 7 = 1.6
    assert metrics["ratio_mean"].item() == pytest.approx(1.6)
    # k3 = r - 1 - ln r: 1.1 -> .0046898, 1.5 -> .0945349, .5 -> .1931472, 5 -> 2.3905621
    # (2*.0046898 + 2*.0945349 + 2*.1931472 + 2.3905621) / 7 = 2.9753059 / 7 = .4250437
    assert metrics["approx_kl"].item() == pytest.approx(0.4250437, abs=1e-6)


def test_ppo_dual_clip():
    loss, metrics, grad = _ppo(dual_clip=3.0)
    # A<0, ratio 5 > c = 3: min(5, -3 * -1) = 3, zero gradient; ratio 1.5 < 3 unchanged
    assert loss[1, 3].item() == pytest.approx(3.0) and loss[1, 0].item() == pytest.approx(1.5)
    assert grad[1, 3].item() == 0.0
    assert metrics["dual_clip_frac"].item() == pytest.approx(1 / 7)


def test_ppo_asymmetric_clip():
    # eps_low .2, eps_high .28, A = +1: 1.25 inside -> -1.25; 1.3 -> -1.28; A = -1: .79 -> max(.79, .8) = .8
    logprobs = t([[1.25, 1.3], [0.79, 0.85]]).log()
    loss, m = F.ppo_clip_loss(logprobs, torch.zeros_like(logprobs), ADV, torch.ones(2, 2, dtype=torch.bool),
                              eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, t([[-1.25, -1.28], [0.8, 0.85]]))
    assert m["clip_frac_high"].item() == pytest.approx(0.25) and m["clip_frac_low"].item() == pytest.approx(0.25)


def test_ppo_token_advantages_equal_broadcast():
    logprobs = RATIOS.log()
    a, _ = F.ppo_clip_loss(logprobs, torch.zeros_like(logprobs), ADV, PPO_MASK)
    b, _ = F.ppo_clip_loss(logprobs, torch.zeros_like(logprobs), ADV[:, None].expand(2, 4), PPO_MASK)
    torch.testing.assert_close(a, b)


def test_ppo_on_policy_ratio_one():
    logprobs = t([[-0.3, -2.0]])
    loss, m = F.ppo_clip_loss(logprobs, logprobs, t([0.7]), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(loss, t([[-0.7, -0.7]]))
    assert m["clip_frac"].item() == 0.0 and m["approx_kl"].item() == 0.0


@pytest.mark.parametrize("kwargs, word", [({"eps_low": 1.0}, "eps_low"), ({"eps_high": -0.1}, "eps_high"),
                                          ({"dual_clip": 1.0}, "dual_clip")])
def test_ppo_bad_options(kwargs, word):
    with pytest.raises(ValueError, match=word):
        F.ppo_clip_loss(t([[0.0]]), t([[0.0]]), t([1.0]), torch.ones(1, 1, dtype=torch.bool), **kwargs)


# ---------------------------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    # logprob -1.0, ref -1.5: k1 = -1 + 1.5 = .5; k2 = .5 * .5^2 = .125; x = -.5: k3 = e^-.5 - 1 + .5 = .1065307
    # logprob -1.5, ref -1.0: k1 = -.5; k2 = .125; x = .5: k3 = e^.5 - 1 - .5 = .1487213
    logprobs, ref = t([[-1.0, -1.5]]), t([[-1.5, -1.0]])
    torch.testing.assert_close(F.kl_penalty(logprobs, ref, "k1"), t([[0.5, -0.5]]))
    torch.testing.assert_close(F.kl_penalty(logprobs, ref, "k2"), t([[0.125, 0.125]]))
    torch.testing.assert_close(F.kl_penalty(logprobs, ref), t([[0.1065307, 0.1487213]]), atol=1e-7, rtol=0)


def test_kl_k3_clamped_and_bad_kind():
    # x = ref - logprob = 100 is clamped to 20: e^20 - 21
    out = F.kl_penalty(t([[-100.0]]), t([[0.0]]), "k3")
    assert out.item() == pytest.approx(math.exp(20) - 21)
    with pytest.raises(ValueError, match="k3"):
        F.kl_penalty(t([[0.0]]), t([[0.0]]), "k4")


def test_mismatch_weights_tis_and_mis():
    from rlkit.functional import mismatch_weights
    # row 0: log rho = [log 3, log 0.5] -> rho = [3, 0.5]; TIS cap 2 -> [2, 0.5]; geo mean = sqrt(1.5) = 1.2247
    # row 1: log rho = [log 4, log 4, pad] -> geo mean 4 > mis_high=2 -> whole row dropped
    old = torch.log(torch.tensor([[0.3, 0.1, 0.0], [0.4, 0.4, 0.0]]).clamp(min=1e-9))
    rollout = torch.log(torch.tensor([[0.1, 0.2, 1.0], [0.1, 0.1, 1.0]]))
    mask = torch.tensor([[True, True, False], [True, True, False]])
    w, m = mismatch_weights(old, rollout, mask, tis_cap=2.0, mis_low=0.5, mis_high=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6)
    assert m["tis_clip_frac"].item() == pytest.approx(3 / 4)   # rho = 3, 4, 4 exceed the cap
    assert m["mis_masked_frac"].item() == pytest.approx(0.5)
    # k3 = rho - 1 - log rho: (2 - log 3) + (-0.5 - log 0.5) + 2 * (3 - log 4), over 4 tokens
    k3 = ((3 - 1 - math.log(3)) + (0.5 - 1 - math.log(0.5)) + 2 * (4 - 1 - math.log(4))) / 4
    assert m["mismatch_kl"].item() == pytest.approx(k3, rel=1e-5)
    w0, m0 = mismatch_weights(old, old, mask)   # identical policies: weights 1 on valid tokens, no KL
    assert torch.equal(w0, mask.float()) and m0["mismatch_kl"].item() == pytest.approx(0.0, abs=1e-7)
