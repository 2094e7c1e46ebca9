"""Variable group sizes (``sampler: gvm`` gives each prompt its own n_i, singletons included): every registered
advantage estimator and objective, on batches whose groups differ in size and whose rows are interleaved.

1. Group-local maths (grpo scale group/none, rloo, BNPO with fixed moments, max@k with every baseline, and the
   row-local gae without whitening / passthrough / mean): the whole batch equals each group alone, scattered back.
2. Batch-level parts (grpo scale=batch, reinforce_pp's whitening, gae's whitening, BNPO's batch moments):
   hand-computed examples with small variable groups.
3. Singletons and groups smaller than max@k's k: what each module docstring promises.
4. Shuffled binary groups of sizes 1, 2, 3, 5, 8 (rows interleaved): group-local maths equals each group alone,
   hand-computed sizes one and three, and every estimator plug-in stays finite with documented singletons.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rlkit import functional as F
from rlkit.batch import RolloutBatch
from rlkit.functional.max_at_k import MAX_AT_K_BASELINES
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, OBJECTIVES

load_builtins()
NAN = float("nan")
CTX = {"max_len": 4, "total_steps": 10, "group_size": 4, "seed": 0}   # the keys rlkit.build passes
T = 4


def make_batch(rewards, group_ids, lengths=None) -> RolloutBatch:
    """A RolloutBatch with rewards [N], group_ids [N] and response lengths [N] (default T each); critic values 0."""
    n = len(rewards)
    r = torch.tensor(rewards, dtype=torch.float32)
    lengths = torch.tensor([T] * n if lengths is None else lengths)
    mask = torch.arange(T)[None, :] < lengths[:, None]                                    # [N, T] bool
    b = RolloutBatch(prompt_ids=[[1]] * n, response_ids=torch.ones(n, T, dtype=torch.long), response_mask=mask,
                     rollout_logprobs=torch.zeros(n, T), truncated=torch.zeros(n, dtype=torch.bool),
                     group_ids=torch.tensor(group_ids, dtype=torch.long), rewards=r, success=r.clone(),
                     reward_components=r[:, None].clone(), raw_rewards=r.clone())
    b.values = torch.zeros(n, T)
    return b


def advantage(name: str, kwargs: dict | None = None):
    return ADVANTAGES.build(name, kwargs or {}, **CTX)


def objective(name: str, kwargs: dict | None = None):
    return OBJECTIVES.build(name, kwargs or {}, **{**CTX, "group_size": None})


# ------------------------------------------------------------------------ 1. group-local invariance

# every function maps (batch) -> [N] or [N, T] and, by its documented maths, only looks inside a group
def _estimator(name, kwargs=None):
    def run(b):
        return advantage(name, kwargs)(b)[0]                                               # [N, T]
    return run


def _objective(name, kwargs):
    def run(b):
        return objective(name, kwargs)(b.rewards, b.group_ids)                             # [N]
    return run


GROUP_LOCAL = {
    "grpo group": _estimator("grpo"),
    "grpo group raw": _estimator("grpo", {"singleton": "raw"}),
    "grpo none": _estimator("grpo", {"scale": "none"}),
    "grpo none raw": _estimator("grpo", {"scale": "none", "singleton": "raw"}),
    "rloo": _estimator("rloo"),
    "passthrough": _estimator("passthrough"),
    "gae unwhitened": _estimator("gae", {"whiten": False}),       # row-local: the group ids are never read
    # BNPO's (mu, s2) are batch moments; with the moments fixed (what an EMA supplies) the rest is group-local
    "beta_norm fixed moments": lambda b: F.beta_norm_advantages(b.rewards, b.group_ids, moments=(0.4, 0.05)),
    "beta_norm fixed moments ref": lambda b: F.beta_norm_advantages(b.rewards, b.group_ids, moments=(0.4, 0.05),
                                                                    singleton="reference"),
    "mean": _objective("mean", {}),
    **{f"max_at_k {baseline} k={k}": _objective("max_at_k", {"k": k, "baseline": baseline})
       for baseline in MAX_AT_K_BASELINES for k in (1, 2, 3)},
}


def fixed_case():
    """Sizes [1, 2, 3, 5, 8] (ids 50, 40, 30, 20, 10), binary rewards with one NaN, rows interleaved."""
    sizes, ids = [1, 2, 3, 5, 8], [50, 40, 30, 20, 10]
    gen = torch.Generator().manual_seed(0)
    group_ids = [i for i, n in zip(ids, sizes) for _ in range(n)]
    rewards = torch.randint(0, 2, (len(group_ids),), generator=gen).float().tolist()
    rewards[7] = NAN
    perm = torch.randperm(len(group_ids), generator=gen).tolist()
    lengths = [1 + i % T for i in range(len(group_ids))]
    return [rewards[p] for p in perm], [group_ids[p] for p in perm], [lengths[p] for p in perm]


@st.composite
def variable_groups(draw):
    """(rewards, group_ids, lengths): 1-5 groups of 1-8 rows, arbitrary distinct ids, rows shuffled."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    ids = draw(st.lists(st.integers(-10**6, 10**6), min_size=len(sizes), max_size=len(sizes), unique=True))
    group_ids = [i for i, n in zip(ids, sizes) for _ in range(n)]
    n = len(group_ids)
    rewards = draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, 1.0, 0.5, 0.25, NAN]), min_size=n, max_size=n))
    lengths = draw(st.lists(st.integers(0, T), min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    return [rewards[p] for p in perm], [group_ids[p] for p in perm], [lengths[p] for p in perm]


def each_group_alone(fn, b: RolloutBatch) -> torch.Tensor:
    """fn applied to every group on its own (RolloutBatch.select), scattered back into the batch's row order."""
    out = None
    for g in b.group_ids.unique():
        rows = (b.group_ids == g).nonzero().flatten()                                      # [n_g]
        part = fn(b.select(rows)).float()
        if out is None:
            out = torch.zeros((len(b),) + tuple(part.shape[1:]))
        out[rows] = part
    return out


@pytest.mark.parametrize("name", GROUP_LOCAL)
@settings(max_examples=8, deadline=None)
@given(case=variable_groups())
@example(case=fixed_case())
def test_group_local_maths_equals_each_group_alone(name, case):
    fn = GROUP_LOCAL[name]
    b = make_batch(*case)
    whole = fn(b).float()
    if name != "mean":                                     # the identity keeps NaN rewards; the others give 0
        assert torch.isfinite(whole).all()
    torch.testing.assert_close(whole, each_group_alone(fn, make_batch(*case)), atol=1e-5, rtol=1e-5, equal_nan=True)


def test_the_fixed_case_is_not_trivial():
    # the @example above must really hold a singleton, a NaN and mixed groups, or the invariance is vacuous
    rewards, ids, _ = fixed_case()
    b = make_batch(rewards, ids)
    assert (b.group_ids == 50).sum() == 1                                         # the singleton
    assert torch.isnan(b.rewards).sum() == 1
    assert b.group_ids.tolist() != sorted(b.group_ids.tolist())                  # interleaved
    adv = advantage("grpo")(b)[0]
    assert (adv.abs().sum(-1) > 0).sum() >= 6                                     # rows of several mixed groups


# ---------------------------------------------------------------------- 2. batch-level parts, by hand


def test_grpo_batch_scale_uses_every_valid_reward_of_the_batch():
    # sizes [1, 3], interleaved: group 7 = [0] (singleton), group 9 = [1, 0, 0]
    b = make_batch([1.0, 0.0, 0.0, 0.0], [9, 7, 9, 9])
    adv = advantage("grpo", {"scale": "batch", "eps": 0.0})(b)[0][:, 0]
    # batch std over all 4 valid rewards [1, 0, 0, 0] (the singleton's included): mean 1/4,
    # Bessel var = (9/16 + 3 * 1/16) / 3 = 1/4, std 1/2. Group 9 mean 1/3:
    # A = (1 - 1/3) / (1/2) = 4/3, (0 - 1/3) / (1/2) = -2/3; singleton -> 0 (singleton="zero")
    assert adv.tolist() == pytest.approx([4 / 3, 0.0, -2 / 3, -2 / 3])
    # scale "group": group std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) -> A = 2/sqrt(3), -1/sqrt(3)
    adv = advantage("grpo", {"scale": "group", "eps": 0.0})(b)[0][:, 0]
    assert adv.tolist() == pytest.approx([2 / math.sqrt(3), 0.0, -1 / math.sqrt(3), -1 / math.sqrt(3)])


@pytest.mark.parametrize("token_weighted,expected", [
    # x = r - group mean = [0 (singleton, left out), 2/3, -1/3, -1/3], one weight per completion:
    # m = 0, v = (4/9 + 1/9 + 1/9) / 2 = 1/3 -> A = x sqrt(3) = [0, 1.154701, -0.577350, -0.577350]
    (False, [0.0, 2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)]),
    # weights = response lengths [1, 2, 3] of the group-9 rows (the singleton's 4 tokens do not count):
    # m = (2/3 - 2/3 - 1) / 6 = -1/6; x - m = [5/6, -1/6, -1/6];
    # v = (25/36 + 2/36 + 3/36) / (6 - 1) = 1/6 -> A = (x - m) sqrt(6) = [2.041241, -0.408248, -0.408248]
    (True, [0.0, 5 / 6 * math.sqrt(6), -math.sqrt(6) / 6, -math.sqrt(6) / 6]),
])
def test_reinforce_pp_whitens_over_the_batch_without_singletons(token_weighted, expected):
    b = make_batch([1.0, 1.0, 0.0, 0.0], [7, 9, 9, 9], lengths=[4, 1, 2, 3])     # sizes [1, 3]
    adv = advantage("reinforce_pp", {"token_weighted": token_weighted})(b)[0]
    per_row = adv.sum(-1) / b.response_mask.sum(-1)                               # the row's value on its tokens
    assert per_row.tolist() == pytest.approx(expected, abs=1e-6)
    assert (adv[~b.response_mask] == 0).all()


def test_gae_whitening_is_over_tokens_and_ignores_groups():
    # sizes [1, 3]: group 7 = row 0 (singleton), group 9 = rows 1-3; lengths [1, 2, 3, 2]; V = 0, gamma = lam = 1,
    # so the raw A_t = the row's score on each valid token: tokens 1 | 1 1 | 0 0 0 | 0 0 (3 ones, 5 zeros).
    # whiten: mean 3/8, Bessel var (3 (5/8)^2 + 5 (3/8)^2) / 7 = 15/56 -> std 0.517549
    # A(r=1) = (5/8) / 0.517549 = 1.207615, A(r=0) = -(3/8) / 0.517549 = -0.724569
    rewards, lengths = [1.0, 1.0, 0.0, 0.0], [1, 2, 3, 2]
    b = make_batch(rewards, [7, 9, 9, 9], lengths)
    adv = advantage("gae")(b)[0]
    std = math.sqrt(15 / 56)
    expected = torch.tensor([[5 / 8 / std] * 1 + [0.0] * 3, [5 / 8 / std] * 2 + [0.0] * 2,
                             [-3 / 8 / std] * 3 + [0.0], [-3 / 8 / std] * 2 + [0.0] * 2])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    assert b.returns.sum(-1).tolist() == pytest.approx([1.0, 2.0, 0.0, 0.0])     # R = raw A + V = score per token
    other = make_batch(rewards, [1, 2, 3, 4], lengths)                             # every row its own group
    torch.testing.assert_close(advantage("gae")(other)[0], adv)


def test_beta_norm_batch_moments_skip_singletons():
    # sizes [1, 4, 2, 4], interleaved: group 1 = [1] (singleton), group 2 = [1, 0, 0, 0] (p = 1/4),
    # group 3 = [1, 0] (p = 1/2), group 4 = [1, 0, 1, 1] (p = 3/4).
    ids = [2, 4, 3, 1, 2, 4, 3, 4, 2, 4, 2]
    rewards = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    b = make_batch(rewards, ids)
    adv, metrics = advantage("beta_norm")(b)
    # singleton="zero": the singleton is left out, p = [1/4, 1/2, 3/4] -> mu = 1/2, Bessel s2 = (1/16 + 0 + 1/16)/2
    # = 1/16; c = (1/4) / (1/16) - 1 = 3 -> alpha = beta = 1 + 3 (1/2) / 3 = 1.5
    assert (metrics["mu"], metrics["var"], metrics["alpha"], metrics["beta"]) == pytest.approx((0.5, 1 / 16, 1.5,
                                                                                                  1.5))
    # alpha = beta = 1.5: A = (pi/8) (r - p) / sqrt(p (1 - p))
    #   p = 1/4: r=1 -> (pi/8)(3/4)/sqrt(3/16) = 0.680175, r=0 -> (pi/8)(-1/4)/sqrt(3/16) = -0.226725
    #   p = 1/2: r=1 -> pi/8 = 0.392699, r=0 -> -0.392699
    #   p = 3/4: r=1 -> 0.226725, r=0 -> -0.680175;   singleton -> 0
    a, c, h = math.pi / 8 * math.sqrt(3), math.pi / 8 / math.sqrt(3), math.pi / 8
    expected = {(1, 1.0): 0.0, (2, 1.0): a, (2, 0.0): -c, (3, 1.0): h, (3, 0.0): -h, (4, 1.0): c, (4, 0.0): -a}
    got = adv[:, 0].tolist()
    assert got == pytest.approx([expected[(g, r)] for g, r in zip(ids, rewards)], abs=1e-5)
    # singleton="reference": the singleton enters with p = 0 -> p = [0, 1/4, 1/2, 3/4]: mu = 3/8,
    # s2 = (9 + 1 + 1 + 9)/64 / 3 = 5/48; c = (15/64) / (5/48) - 1 = 1.25 -> alpha = 1 + 1.25 (3/8)/3 = 1.15625,
    # beta = 1 + 1.25 (5/8)/3 = 1.260417; the singleton (r = 1) gets 1 / pdf(0) = 1/0 -> the cap 1e6 (documented)
    adv, metrics = advantage("beta_norm", {"singleton": "reference"})(b)
    assert (metrics["mu"], metrics["var"], metrics["alpha"], metrics["beta"]) == pytest.approx(
        (3 / 8, 5 / 48, 1.15625, 1 + 1.25 * 5 / 24))
    assert adv[ids.index(1), 0].item() == pytest.approx(1e6)


def test_beta_norm_moments_of_sizes_two_and_three():
    # sizes [2, 3]: p = [1/2, 1/3] -> mu = 5/12, s2 = 2 (1/12)^2 / 1 = 1/72;
    # c = (5/12)(7/12) 72 - 1 = 16.5 -> alpha = 1 + 16.5 (5/12)/3 = 3.291667, beta = 1 + 16.5 (7/12)/3 = 4.208333
    b = make_batch([1.0, 1.0, 0.0, 0.0, 0.0], [4, 5, 4, 5, 5])
    _, metrics = advantage("beta_norm")(b)
    assert (metrics["mu"], metrics["var"], metrics["alpha"], metrics["beta"]) == pytest.approx(
        (5 / 12, 1 / 72, 1 + 16.5 * 5 / 36, 1 + 16.5 * 7 / 36))


# -------------------------------------------------------------------------------- 3. singletons


@pytest.mark.parametrize("name,kwargs,expected", [
    ("grpo", {}, 0.0),                                              # singleton="zero" (TRL)
    ("grpo", {"scale": "batch"}, 0.0),
    ("grpo", {"scale": "none"}, 0.0),
    ("grpo", {"singleton": "raw", "eps": 0.25}, 1.0 / 1.25),       # verl: mu 0, sigma 1 -> r / (1 + eps)
    ("grpo", {"singleton": "raw", "scale": "batch", "eps": 0.25}, 1.0 / 1.25),
    ("grpo", {"singleton": "raw", "scale": "none"}, 1.0),          # r
    ("rloo", {}, 0.0),                                              # n < 2 -> 0
    ("reinforce_pp", {}, 0.0),                                      # A = 0, left out of (m, v)
    ("beta_norm", {}, 0.0),                                         # singleton="zero"
    ("passthrough", {}, 1.0),                                       # the objective's value itself
])
def test_singleton_gets_its_documented_advantage(name, kwargs, expected):
    # sizes [1, 3], the singleton (r = 1) in the middle of group 9's rows
    b = make_batch([1.0, 1.0, 0.0, 0.0], [9, 3, 9, 9])
    adv = advantage(name, kwargs)(b)[0]
    assert adv[1].tolist() == pytest.approx([expected] * T)
    assert torch.isfinite(adv).all() and adv[[0, 2, 3]].abs().sum() > 0          # the others are trained


@pytest.mark.parametrize("name,kwargs", [("reinforce_pp", {}), ("beta_norm", {}), ("grpo", {"scale": "group"})])
def test_singletons_do_not_change_the_other_groups(name, kwargs):
    # the batch statistics skip singletons: two singletons (groups 5 and 6) interleaved into a batch of
    # group 9 = [1, 0, 0] and group 8 = [1, 0] leave the other rows' advantages unchanged, and get 0 themselves
    base = make_batch([1.0, 0.0, 0.0, 1.0, 0.0], [9, 9, 9, 8, 8])
    more = make_batch([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0], [9, 9, 5, 9, 8, 6, 8])
    keep, singletons = [0, 1, 3, 4, 6], [2, 5]
    a, b = advantage(name, kwargs)(base)[0], advantage(name, kwargs)(more)[0]
    torch.testing.assert_close(b[keep], a)
    assert (b[singletons] == 0).all() and a.abs().sum() > 0


def test_a_batch_of_only_singletons_gives_zero_everywhere():
    b = make_batch([1.0, 0.0, 0.5], [1, 2, 3])
    for name, kwargs in [("grpo", {}), ("grpo", {"scale": "batch"}), ("rloo", {}), ("reinforce_pp", {}),
                         ("beta_norm", {}), ("beta_norm", {"ema": 0.5})]:
        adv, metrics = advantage(name, kwargs)(b)
        assert (adv == 0).all(), name
        assert all(math.isfinite(v) for v in metrics.values()), name


def test_max_at_k_on_a_singleton_with_k_1():
    # k = 1, group [1]: r~ = r / n = 1. bon_mean z-scores a single value -> 0; loo1 with k = 1 is r / n = 1
    # (documented: not zero on an all-equal group); bon_max_* need a lower reward -> 0; loo needs n >= k + 1 = 2,
    # so the singleton gets 0; none -> r~ = 1. Group 9 = [1, 0] is there so the batch is not all singletons.
    r, g = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([9, 4, 9])
    expected = {"bon_mean": 0.0, "loo1": 1.0, "bon_max_mean": 0.0, "bon_max_second": 0.0, "loo": 0.0, "none": 1.0}
    for baseline, want in expected.items():
        out = objective("max_at_k", {"k": 1, "baseline": baseline})(r, g)
        assert out[1].item() == pytest.approx(want), baseline


def test_max_at_k_groups_smaller_than_k_get_zero_and_the_rest_is_hand_computed():
    # sizes [1, 3], k = 2, interleaved: group 4 = [1] (n < k), group 9 = [1, 0, 0].
    # Group 9 sorted r = (0, 0, 1), C(3, 2) = 3; r~_(i) = [C(i-1,1) r_(i) + sum_{j>i} C(j-2,0) r_(j)] / 3:
    #   r~ = [(0 + 0 + 1)/3, (0 + 1)/3, (2 * 1)/3] = [1/3, 1/3, 2/3]  (sum 4/3 = k rho, rho = 2/3)
    #   bon_mean: mean 4/9, std sqrt((4/81 + 1/81 + 1/81)/2) = 1/sqrt(27) -> (2/9) sqrt(27) = 2/sqrt(3), -1/sqrt(3)
    #   loo1: (1/3) sum_{j<i} (r_(i) - r_(j)) -> best 2/3, the zeros 0
    #   bon_max_mean: 1 - 1/3 = 2/3 on the best; bon_max_second: 1 - 0 = 1 on the best
    #   loo: r~_i - (2/3) rho_{-i}(2, 2): best: 2/3 - (2/3) max(0, 0) = 2/3; a zero: 1/3 - (2/3) max(1, 0) = -1/3
    r, g = torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([9, 4, 9, 9])
    s3 = math.sqrt(3)
    expected = {"none": [1 / 3, 2 / 3, 1 / 3], "bon_mean": [-1 / s3, 2 / s3, -1 / s3], "loo1": [0, 2 / 3, 0],
                "bon_max_mean": [0, 2 / 3, 0], "bon_max_second": [0, 1, 0], "loo": [-1 / 3, 2 / 3, -1 / 3]}
    for baseline, want in expected.items():
        out = objective("max_at_k", {"k": 2, "baseline": baseline, "eps": 0.0})(r, g)
        assert out[1].item() == 0.0, baseline                                     # the group smaller than k
        assert out[[0, 2, 3]].tolist() == pytest.approx(want, abs=1e-6), baseline
    # the functional form refuses such a group rather than guessing
    with pytest.raises(ValueError, match="k=2 is larger than group 4's size n=1"):
        F.max_at_k_advantages(r, g, 2)


def test_max_at_k_loo_zeroes_a_group_of_exactly_k_instead_of_crashing():
    # regression: "loo" needs k <= n - 1; a variable-size batch with a group of exactly k members used to raise
    # ValueError from the whole objective call. Sizes [2, 3], k = 2: group 5 = [1, 0] (n = k) -> 0;
    # group 9 = [1, 0, 0] as in the test above -> [2/3, -1/3, -1/3].
    r, g = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]), torch.tensor([5, 9, 5, 9, 9])
    out = objective("max_at_k", {"k": 2, "baseline": "loo"})(r, g)
    assert out.tolist() == pytest.approx([0.0, 2 / 3, 0.0, -1 / 3, -1 / 3], abs=1e-6)
    # the other baselines still use the group of exactly k: loo1 gives its best (1/C(2,2)) (1 - 0) = 1
    assert objective("max_at_k", {"k": 2, "baseline": "loo1"})(r, g)[0].item() == pytest.approx(1.0)


def test_max_at_k_short_groups_with_nan_count_only_valid_rows():
    # group 9 = [1, NaN, 0]: 2 valid rows -> usable for k = 2 (r~ = max = 1 each), not for k = 3 (-> 0)
    r, g = torch.tensor([1.0, NAN, 0.0]), torch.tensor([9, 9, 9])
    assert objective("max_at_k", {"k": 2, "baseline": "none"})(r, g).tolist() == [1.0, 0.0, 1.0]
    assert objective("max_at_k", {"k": 3, "baseline": "none"})(r, g).tolist() == [0.0, 0.0, 0.0]


# 4. shuffled binary groups of sizes 1, 2, 3, 5, 8
SIZES = [1, 2, 3, 5, 8]


def grouped(seed: int = 0):
    """Binary rewards for groups of SIZES, rows shuffled: rewards [N], group_ids [N] (ids 10, 11, ...)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.full((n,), 10 + g) for g, n in enumerate(SIZES)])      # [N]
    rewards = torch.randint(0, 2, (len(ids),), generator=gen).float()             # [N]
    rewards[ids == 12] = torch.tensor([1.0, 0.0, 0.0])                            # a mixed group of 3
    perm = torch.randperm(len(ids), generator=gen)
    return rewards[perm], ids[perm]


def per_group(fn, rewards, ids):
    """fn applied to each group alone, scattered back into batch order."""
    out = torch.zeros_like(rewards)
    for g in ids.unique():
        rows = (ids == g).nonzero().flatten()
        out[rows] = fn(rewards[rows], ids[rows]).to(out.dtype)
    return out


SHUFFLED_LOCAL = {
    "grpo group": lambda r, g: F.grpo_advantages(r, g, scale="group"),
    "grpo none": lambda r, g: F.grpo_advantages(r, g, scale="none"),
    "rloo": F.rloo_advantages,
    # the plug-in: groups with fewer than k samples get 0 (the functional form refuses them)
    "max@k bon_mean k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "bon_mean"})(r, g),
    "max@k loo1 k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "loo1"})(r, g),
    "max@k none k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "none"})(r, g),
}


@pytest.mark.parametrize("name", SHUFFLED_LOCAL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_groups_equal_each_group_alone(name, seed):
    rewards, ids = grouped(seed)
    fn = SHUFFLED_LOCAL[name]
    assert torch.allclose(fn(rewards, ids).float(), per_group(fn, rewards, ids).float(), atol=1e-6)


def test_hand_computed_sizes_one_and_three():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])      # group 7 = [1] (singleton), group 9 = [1, 0, 0]
    g = torch.tensor([7, 9, 9, 9])
    # GRPO: singleton -> 0; group 9 mean 1/3, Bessel std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3) = 0.57735
    adv = F.grpo_advantages(r, g, scale="group", eps=0.0)
    assert adv.tolist() == pytest.approx([0.0, (2 / 3) / 0.57735027, (-1 / 3) / 0.57735027, (-1 / 3) / 0.57735027])
    # RLOO: n/(n-1) (r - mean) = 1.5 * [2/3, -1/3, -1/3] = [1, -0.5, -0.5]; singleton 0
    assert F.rloo_advantages(r, g).tolist() == pytest.approx([0.0, 1.0, -0.5, -0.5])
    # verl singleton convention: mu 0, sigma 1 -> A = r / (1 + eps)
    assert F.grpo_advantages(r, g, singleton="raw", eps=0.0)[0].item() == pytest.approx(1.0)
    # max@k, k = 2: the singleton has fewer than k samples -> 0 (documented in the plug-in; the functional form
    # refuses such a group); group 9 gets the same advantages as computed on its own
    mk = OBJECTIVES.build("max_at_k", {"k": 2})(r, g)
    assert mk[0].item() == 0.0 and mk[1:].tolist() == pytest.approx(F.max_at_k_advantages(r[1:], g[1:], k=2).tolist())
    with pytest.raises(ValueError, match="k=2 is larger than group 7's size n=1"):
        F.max_at_k_advantages(r, g, k=2)


def _shuffled_batch(rewards, ids, T=3):
    n = len(rewards)
    mask = torch.ones(n, T, dtype=torch.bool)
    b = RolloutBatch(prompt_ids=[[1]] * n, response_ids=torch.ones(n, T, dtype=torch.long), response_mask=mask,
                     rollout_logprobs=torch.zeros(n, T), truncated=torch.zeros(n, dtype=torch.bool), group_ids=ids,
                     rewards=rewards, success=rewards.clone(), reward_components=rewards[:, None].clone(),
                     raw_rewards=rewards.clone())
    b.values = torch.zeros(n, T)
    b.old_logprobs = b.ref_logprobs = torch.zeros(n, T)
    return b


@pytest.mark.parametrize("name,kwargs", [("grpo", {}), ("grpo", {"scale": "batch"}), ("beta_norm", {}),
                                         ("rloo", {}), ("reinforce_pp", {}), ("gae", {}), ("passthrough", {})])
def test_every_estimator_plugin_handles_variable_groups(name, kwargs):
    rewards, ids = grouped(0)
    adv, _ = ADVANTAGES.build(name, kwargs, max_len=3, total_steps=10, group_size=4)(_shuffled_batch(rewards, ids))
    assert adv.shape == (len(rewards), 3) and torch.isfinite(adv).all()
    singleton = (ids == 10).nonzero().item()
    if name in ("grpo", "rloo", "beta_norm"):       # a group of one has no baseline: documented A = 0
        assert adv[singleton].abs().max() == 0
    if name == "grpo" and not kwargs:               # equals the functional form on the same groups
        assert torch.allclose(adv[:, 0], F.grpo_advantages(rewards, ids))


def test_mean_objective_is_the_identity_on_variable_groups():
    rewards, ids = grouped(1)
    assert torch.equal(OBJECTIVES.build("mean", {})(rewards, ids), rewards)
