"""The issue-4 plug-ins as the trainer drives them: state, options, cross-plug-in checks and clear errors."""

import math

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.build import build_plugins
from rlkit.config import load_config
from rlkit.plugin_api import MicroBatch
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, LOSSES, OBJECTIVES, PluginError

load_builtins()


def batch(rewards, group_ids, T=3, components=None) -> RolloutBatch:
    n = len(rewards)
    mask = torch.ones(n, T, dtype=torch.bool)
    r = torch.tensor(rewards, dtype=torch.float32)
    return RolloutBatch(prompt_ids=[[1]] * n, response_ids=torch.ones(n, T, dtype=torch.long), response_mask=mask,
                        rollout_logprobs=torch.zeros(n, T), truncated=torch.zeros(n, dtype=torch.bool),
                        group_ids=torch.tensor(group_ids), rewards=r, success=r.clone(),
                        reward_components=r[:, None] if components is None else torch.tensor(components))


def test_beta_norm_ema_is_a_checkpointed_moving_average():
    adv = ADVANTAGES.build("beta_norm", {"ema": 0.5})
    b1 = batch([1, 1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])      # p = 3/4, 1/4: mu 1/2, var 1/8
    adv(b1)
    assert adv.moments == pytest.approx((0.5, 0.125))
    b2 = batch([1, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])      # p = 1/2, 1/4: mu 3/8, var 1/32
    _, metrics = adv(b2)
    assert adv.moments == pytest.approx((0.5 * 0.5 + 0.5 * 0.375, 0.5 * 0.125 + 0.5 / 32))
    assert metrics["mu"] == pytest.approx(0.4375)
    state = adv.state_dict()
    fresh = ADVANTAGES.build("beta_norm", {"ema": 0.5})
    fresh.load_state_dict(state)
    assert fresh.moments == adv.moments
    with pytest.raises(ValueError, match="ema is off"):
        ADVANTAGES.build("beta_norm", {}).load_state_dict(state)


def test_beta_norm_decomposition_averages_component_advantages():
    # component 0 = accuracy, component 1 = format; two prompts of 2 samples
    comps = [[1, 1], [0, 1], [1, 0], [1, 1]]
    b = batch([2, 1, 1, 2], [0, 0, 1, 1], components=comps)
    a, _ = ADVANTAGES.build("beta_norm", {"decomposition": True})(b)
    # each component: 2 prompts -> Bessel var over p; acc p = (1/2, 1) -> mu 3/4, var 1/8 -> c = 0.5, a=0.375,
    # b=0.125 -> alpha = 1.125, beta = 1.0417; fmt p = (1, 1/2) mirrors it. Per component A = w (r - p).
    from rlkit.functional import beta_norm_advantages
    acc = beta_norm_advantages(torch.tensor([1., 0., 1., 1.]), torch.tensor([0, 0, 1, 1]))
    fmt = beta_norm_advantages(torch.tensor([1., 1., 0., 1.]), torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(a[:, 0], (acc + fmt) / 2)
    assert acc[2] == 0 and acc[3] == 0 and acc[0] == -acc[1] != 0     # solved prompt -> 0; symmetric otherwise


def test_max_at_k_checks_k_against_n_and_refuses_a_second_baseline(tmp_path):
    with pytest.raises(PluginError, match="k=5 is larger than the group size rollout.n=4"):
        OBJECTIVES.build("max_at_k", {"k": 5}, group_size=4)
    base = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}, "rollout": {"n": 4},
            "objective": {"name": "max_at_k", "k": 2, "baseline": "loo1"}}
    with pytest.raises(ValueError, match="already returns advantages.*advantage: passthrough"):
        build_plugins(load_config(None, [], base=base))
    ok = build_plugins(load_config(None, ["advantage=passthrough"], base=base))
    assert ok.advantage.takes_advantages


def test_max_at_k_none_plus_grpo_is_bon_mean_and_nan_rows_are_left_out():
    r, g = torch.tensor([0.0, 1.0, 0.5, 0.2, 1.0, 1.0, 0.0, float("nan")]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    bon = OBJECTIVES.build("max_at_k", {"k": 2})(r, g)
    rt = OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "none"})(r, g)
    grpo = ADVANTAGES.build("grpo", {})
    b = batch(rt.tolist(), g.tolist())
    a, _ = grpo(b)
    assert torch.allclose(a[:4, 0], bon[:4], atol=1e-6)                  # group 0 (group 1 holds a NaN row)
    assert bon[4:].tolist() == [0.0, 0.0, 0.0, 0.0]                        # r~ all equal -> 0; NaN row -> 0
    # group 1 has 3 valid samples [1, 1, 0]: r~ for k=2 = (1/3) * sum over pairs containing i of the max
    assert rt[4:7].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3]) and rt[7] == 0 and bon[7] == 0


def test_gae_sets_returns_adapts_kl_and_needs_values():
    gae = ADVANTAGES.build("gae", {"gamma": 1.0, "lam": 1.0, "whiten": False, "kl_coef": 0.1, "kl_target": 0.01,
                                   "kl_horizon": 100})
    assert gae.requires == {"values", "old_logprobs", "ref_logprobs"}
    b = batch([1.0, 0.0], [0, 1], T=2)
    b.values = torch.tensor([[0.5, 0.25], [0.0, 0.0]])
    b.old_logprobs = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    b.ref_logprobs = torch.tensor([[-1.2, -1.0], [-1.0, -1.5]])           # k1 KL = 0.2, 0 / 0, 0.5
    adv, m = gae(b)
    # token rewards: row 0 [-0.02, 1.0], row 1 [0.0, -0.05]; gamma = lam = 1: A_t = sum_{s>=t} r_s - V_t
    assert torch.allclose(adv, torch.tensor([[0.98 - 0.5, 1.0 - 0.25], [-0.05, -0.05]]))
    assert torch.allclose(b.returns, torch.tensor([[0.98, 1.0], [-0.05, -0.05]]))
    assert m["kl"] == pytest.approx(0.7 / 4)
    # adaptive: e = clip(0.175/0.01 - 1, -0.2, 0.2) = 0.2 -> coef 0.1 * (1 + 0.2 * 2/100)
    assert gae.state_dict()["kl_coef"] == pytest.approx(0.1 * 1.004)
    b.values = None
    with pytest.raises(ValueError, match="critic"):
        gae(b)


def test_value_loss_hand_numbers_and_errors():
    loss = LOSSES.build("value", {"coef": 2.0, "clip": 0.2})
    b = batch([1.0], [0], T=3)
    b.values = torch.tensor([[0.0, 0.5, 0.0]])                             # V_old
    b.returns = torch.tensor([[1.0, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 1.5]], requires_grad=True)              # V (clipped to [-.2,.2], [.3,.7], [-.2,.2])
    out, metrics = loss(MicroBatch(batch=b, logprobs=torch.zeros(1, 3), entropy=None, values=v))
    # token 0: max((0.5-1)^2, (0.2-1)^2) / 2 = 0.32 (clipped term wins); token 1: max(0.36, 0.36) / 2 = 0.18 (a tie:
    # the clipped term does not win); token 2: max(1.5^2, 0.2^2) / 2 = 1.125 (|V - V_old| > c, yet the unclipped term
    # wins, so it does not count as clipped: verl's vf_clipfrac); times coef 2
    assert torch.allclose(out, torch.tensor([[0.64, 0.36, 2.25]]))
    assert float(metrics["value_clipfrac"]) == pytest.approx(1 / 3)
    assert float(metrics["value_loss"]) == pytest.approx((0.32 + 0.18 + 1.125) / 3)
    with pytest.raises(ValueError, match="clip: null for no clipping"):
        LOSSES.build("value", {"clip": 0})
    b.returns = None
    with pytest.raises(ValueError, match="advantage: gae"):
        loss(MicroBatch(batch=b, logprobs=torch.zeros(1, 2), entropy=None, values=v))


def test_gae_without_a_critic_is_refused_before_loading_anything():
    from rlkit.session import check_recipe
    base = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}, "advantage": "gae"}
    with pytest.raises(ValueError, match=r"advantage 'gae' needs critic values.*add a `critic:` section"):
        check_recipe(load_config(None, [], base=base), check_files=False)


def test_beta_norm_rewards_outside_range_name_the_value():
    b = batch([1.0, 2.0, 0.0, 1.0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"2.*r_max"):
        ADVANTAGES.build("beta_norm", {})(b)
    a, _ = ADVANTAGES.build("beta_norm", {"r_max": 2.0})(b)
    assert math.isfinite(float(a.abs().sum()))


def test_passthrough_broadcasts_the_objective_output_over_the_response():
    b = batch([0.5, -1.0, float("nan")], [0, 0, 1], T=3)
    b.response_mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    adv, m = ADVANTAGES.build("passthrough", {})(b)
    assert adv.tolist() == [[0.5, 0.5, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]    # NaN (unscorable) -> 0
    assert m["mean"] == pytest.approx(-0.5 / 3) and m["abs_mean"] == pytest.approx(0.5)


def test_reinforce_pp_discounted_mode_plugin():
    est = ADVANTAGES.build("reinforce_pp", {"mode": "discounted", "gamma": 0.5})
    b = batch([1.0, 0.0], [0, 0], T=3)
    b.response_mask[1, 2] = False
    adv, stats = est(b)
    sd = (0.175) ** 0.5                                    # hand numbers of test_advantage_math
    assert torch.allclose(adv, torch.tensor([[-0.1, 0.15, 0.65], [-0.35, -0.35, 0.0]]) / sd, atol=1e-5)
    assert est.requires == frozenset() and "abs_mean" in stats
    assert ADVANTAGES.build("reinforce_pp", {"mode": "discounted", "kl_coef": 0.1}).requires == {"old_logprobs",
                                                                                                  "ref_logprobs"}
    with pytest.raises(ValueError, match="mode: discounted"):
        ADVANTAGES.build("reinforce_pp", {"gamma": 0.9})
    with pytest.raises(ValueError, match="mode"):
        ADVANTAGES.build("reinforce_pp", {"mode": "discount"})
