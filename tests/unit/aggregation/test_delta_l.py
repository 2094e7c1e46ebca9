"""ΔL aggregation: hand-computed plans, the Dr. GRPO and zero-loss identities, group normalisation, errors."""

import math

import pytest
import torch

from rlkit import functional as F


def test_plan_hand_numbers_batch():
    lengths = torch.tensor([1, 4, 2, 0])
    coef, z = F.aggregation_plan(lengths, "delta_l", max_len=8, alpha=0.5)
    x = [1.0, 0.5, 1 / math.sqrt(2)]                                     # L^-1/2 of the non-empty rows
    total = sum(x)
    assert coef.tolist() == pytest.approx([x[0] / total, x[1] / total, x[2] / total, 0.0])
    assert z == 8.0
    # loss = (1/M) sum_i w_i S_i with S = row sums
    loss = torch.tensor([[1.0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0], [2.0, -1.0, 0, 0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    want = (x[0] * 1.0 + x[1] * 10.0 + x[2] * 1.0) / total / 8
    assert F.aggregate(loss, mask, "delta_l", max_len=8, alpha=0.5).item() == pytest.approx(want)


def test_equal_lengths_is_dr_grpo_for_any_alpha():
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=gen)
    mask = torch.zeros(6, 5, dtype=torch.bool)
    mask[:, :3] = True                                                   # every row has 3 tokens
    dr = F.aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=5)
    for alpha in (0.0, 0.5, 0.75, 1.0):
        assert F.aggregate(loss, mask, "delta_l", max_len=5, alpha=alpha).item() == pytest.approx(dr.item())
    uneven = mask.clone()
    uneven[0, 3:] = True
    assert F.aggregate(loss, uneven, "delta_l", max_len=5, alpha=0.0).item() == pytest.approx(
        F.aggregate(loss, uneven, "seq_mean_token_sum_norm", max_len=5).item())   # alpha 0: Dr. GRPO always


def test_alpha_one_binary_grpo_on_policy_loss_is_zero_but_gradient_is_not():
    lengths = torch.tensor([3, 5, 1, 4, 2, 6])
    mask = torch.arange(6)[None, :] < lengths[:, None]                   # [6, 6]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    adv = F.grpo_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 1]))    # sum within each group = 0
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logprobs = torch.nn.functional.logsigmoid(logits) * mask
    token_loss, _ = F.ppo_clip_loss(logprobs, logprobs.detach(), adv, mask)   # ratio 1: loss = -A per token
    loss = F.aggregate(token_loss, mask, "delta_l", max_len=6, alpha=1.0)
    assert abs(loss.item()) < 1e-7                                       # w_i L_i constant, sum A = 0
    loss.backward()
    assert logits.grad.norm() > 1e-3


def test_group_normalisation_hand_numbers():
    lengths = torch.tensor([2, 8, 4, 4, 0])
    groups = torch.tensor([7, 7, 3, 3, 3])
    coef, z = F.aggregation_plan(lengths, "delta_l", max_len=10, alpha=1.0, normalize="group", group_ids=groups)
    # group 7: 1/2, 1/8 -> 0.8, 0.2; group 3: 1/4, 1/4, (empty) -> 0.5, 0.5, 0
    assert coef.tolist() == pytest.approx([0.8, 0.2, 0.5, 0.5, 0.0])
    assert z == 20.0                                                     # M x 2 groups
    batch, _ = F.aggregation_plan(lengths, "delta_l", max_len=10, alpha=1.0)
    assert batch.tolist() == pytest.approx([0.5 / 1.125, 0.125 / 1.125, 0.25 / 1.125, 0.25 / 1.125, 0.0])


def test_errors_name_the_value():
    lengths = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="alpha=1.5 must be in"):
        F.aggregation_plan(lengths, "delta_l", max_len=4, alpha=1.5)
    with pytest.raises(ValueError, match="needs max_len > 0"):
        F.aggregation_plan(lengths, "delta_l", max_len=None)
    with pytest.raises(ValueError, match="normalize='sample'"):
        F.aggregation_plan(lengths, "delta_l", max_len=4, normalize="sample")
    with pytest.raises(ValueError, match="has no option"):
        F.aggregation_plan(lengths, "delta_l", max_len=4, beta=1.0)


def test_plugin_plans_like_the_functional_core():
    from rlkit.plugins import load_builtins
    from rlkit.registry import AGGREGATIONS
    load_builtins()
    plan = AGGREGATIONS.build("delta_l", {"alpha": 1.0, "normalize": "group"}).plan(
        torch.tensor([2, 8, 4, 4, 0]), torch.tensor([7, 7, 3, 3, 3]), 10)
    assert plan.coef.tolist() == pytest.approx([0.8, 0.2, 0.5, 0.5, 0.0]) and plan.normalizer == 20.0
