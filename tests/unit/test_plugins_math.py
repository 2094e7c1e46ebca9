"""The maths plug-ins built through their registries, end to end on a small RolloutBatch."""

from __future__ import annotations

import math

import pytest
import torch

import rlkit.advantages  # noqa: F401  (registration on import)
import rlkit.aggregation  # noqa: F401
import rlkit.losses  # noqa: F401
import rlkit.objectives  # noqa: F401
import rlkit.selection  # noqa: F401
from rlkit.batch import RolloutBatch
from rlkit.plugin_api import AggregationPlan, MicroBatch
from rlkit.registry import ADVANTAGES, AGGREGATIONS, LOSSES, OBJECTIVES, SELECTIONS, PluginError


def make_batch() -> RolloutBatch:
    # two groups of two; row 3 is an empty response
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)  # [4,3]
    return RolloutBatch(
        prompt_ids=[[1, 2], [1, 2], [3], [3]],
        response_ids=torch.tensor([[5, 6, 7], [5, 8, 0], [9, 0, 0], [0, 0, 0]]),
        response_mask=mask,
        rollout_logprobs=torch.where(mask, -1.0, 0.0),
        truncated=torch.zeros(4, dtype=torch.bool),
        group_ids=torch.tensor([10, 10, 4, 4]),
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        success=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        reward_components=torch.tensor([[1.0], [0.0], [1.0], [1.0]]),
    )


def test_grpo_plugin():
    batch = make_batch()
    adv, metrics = ADVANTAGES.build("grpo", {})(batch)
    # group 10: rewards [1, 0], mu .5, Bessel std .707107 -> A = +-.5/.707108 = +-.707106; group 4 all equal -> 0
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[a, a, a], [-a, -a, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert (adv[~batch.response_mask] == 0).all()
    assert metrics["zero_std_frac"] == pytest.approx(0.5)  # 1 of 2 groups has all-equal rewards
    assert metrics["mean"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["abs_mean"] == pytest.approx(a / 2)
    assert set(metrics) == {"mean", "std", "abs_mean", "zero_std_frac"}


def test_grpo_plugin_bad_kwargs():
    with pytest.raises(PluginError, match="group"):
        ADVANTAGES.build("grpo", {"scale": "grop"})
    with pytest.raises(PluginError, match="singleton"):
        ADVANTAGES.build("grpo", {"singleton": "none"})
    with pytest.raises(PluginError, match="scale"):
        ADVANTAGES.build("grpo", {"scael": "group"})


def test_mean_objective_and_all_selection():
    batch = make_batch()
    assert torch.equal(OBJECTIVES.build("mean", {})(batch.rewards, batch.group_ids), batch.rewards)
    weights, metrics = SELECTIONS.build("all", {})(batch, 0.5)
    assert torch.equal(weights, batch.response_mask.float())
    assert metrics == {"token_frac": 1.0, "sample_frac": 1.0}


def _micro(batch: RolloutBatch, logprobs: torch.Tensor) -> MicroBatch:
    batch.advantages, _ = ADVANTAGES.build("grpo", {})(batch)
    return MicroBatch(batch=batch, logprobs=logprobs, entropy=None)


def test_ppo_clip_plugin_on_policy_and_off_policy():
    batch = make_batch()
    logprobs = torch.full((4, 3), -1.0, requires_grad=True)
    loss_fn = LOSSES.build("ppo_clip", {})
    assert loss_fn.requires == frozenset()
    # no old_logprobs: ratio = 1, loss = -A on valid tokens, 0 where masked
    loss, metrics = loss_fn(_micro(batch, logprobs))
    torch.testing.assert_close(loss, torch.where(batch.response_mask, -batch.advantages, 0.0))
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    loss.sum().backward()
    assert logprobs.grad.abs().sum() > 0
    # old_logprobs = -1 - ln 2 -> ratio 2 on every token: A>0 clipped at 1.2, A<0 unclipped
    batch.old_logprobs = torch.full((4, 3), -1.0 - math.log(2.0))
    loss, metrics = loss_fn(_micro(batch, logprobs.detach()))
    a = batch.advantages[0, 0].item()
    assert loss[0, 0].item() == pytest.approx(-1.2 * a, rel=1e-5) and loss[1, 0].item() == pytest.approx(2 * a, rel=1e-5)
    assert metrics["clip_frac_high"].item() == pytest.approx(3 / 6)  # 3 of the 6 valid tokens have A > 0


def test_kl_plugin():
    batch = make_batch()
    logprobs = torch.full((4, 3), -1.0)
    assert LOSSES.build("kl", {}).requires == frozenset()
    loss, metrics = LOSSES.build("kl", {})(_micro(batch, logprobs))
    assert torch.equal(loss, torch.zeros(4, 3)) and metrics == {}
    kl = LOSSES.build("kl", {"beta": 0.1})
    assert kl.requires == frozenset({"ref_logprobs"})
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl(_micro(batch, logprobs))
    # ref -1.5 vs logprob -1: k3 = e^-.5 - 1 + .5 = .1065307; loss = .1 * that on valid tokens
    batch.ref_logprobs = torch.full((4, 3), -1.5)
    loss, metrics = kl(_micro(batch, logprobs))
    expected = torch.where(batch.response_mask, 0.1 * 0.1065307, 0.0)
    torch.testing.assert_close(loss, expected, atol=1e-7, rtol=0)
    assert metrics["kl"].item() == pytest.approx(0.1065307, abs=1e-6)
    _, metrics = LOSSES.build("kl", {})(_micro(batch, logprobs))  # beta 0, ref present -> metric only
    assert metrics["kl"].item() == pytest.approx(0.1065307, abs=1e-6)
    with pytest.raises(PluginError, match="k3"):
        LOSSES.build("kl", {"estimator": "k5"})
    with pytest.raises(PluginError, match="beta"):
        LOSSES.build("kl", {"beta": -1.0})


def test_ppo_plugin_bad_kwargs():
    with pytest.raises(PluginError, match="eps_low"):
        LOSSES.build("ppo_clip", {"eps_low": 1.5})
    with pytest.raises(PluginError, match="eps_high"):
        LOSSES.build("ppo_clip", {"eps_hgih": 0.28})


@pytest.mark.parametrize("name, coef, z", [
    ("token_mean", [1, 1, 1, 1], 6.0),                    # 3 + 2 + 1 + 0 tokens
    ("seq_mean_token_mean", [1 / 3, 1 / 2, 1, 0], 3.0),   # 3 non-empty rows
    ("seq_mean_token_sum", [1, 1, 1, 1], 3.0),
    ("seq_mean_token_sum_norm", [1, 1, 1, 1], 12.0),      # N = 4 rows x max_len = 3
])
def test_aggregation_plugins(name, coef, z):
    batch = make_batch()
    plan = AGGREGATIONS.build(name, {}).plan(batch.lengths, batch.group_ids, 3)
    assert isinstance(plan, AggregationPlan)
    torch.testing.assert_close(plan.coef, torch.tensor(coef, dtype=torch.float32))
    assert plan.normalizer == z
