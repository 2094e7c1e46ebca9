"""Variable group sizes (GVM allocates n_i per prompt): every advantage estimator and objective is right when
groups differ in size, include singletons, and are interleaved in the batch."""

import pytest
import torch

from rlkit import functional as F
from rlkit.batch import RolloutBatch
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, OBJECTIVES

load_builtins()
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


GROUP_LOCAL = {
    "grpo group": lambda r, g: F.grpo_advantages(r, g, scale="group"),
    "grpo none": lambda r, g: F.grpo_advantages(r, g, scale="none"),
    "rloo": F.rloo_advantages,
    # the plug-in: groups with fewer than k samples get 0 (the functional form refuses them)
    "max@k bon_mean k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "bon_mean"})(r, g),
    "max@k loo1 k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "loo1"})(r, g),
    "max@k none k=2": lambda r, g: OBJECTIVES.build("max_at_k", {"k": 2, "baseline": "none"})(r, g),
}


@pytest.mark.parametrize("name", GROUP_LOCAL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_local_maths_equals_each_group_alone(name, seed):
    rewards, ids = grouped(seed)
    fn = GROUP_LOCAL[name]
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


def _batch(rewards, ids, T=3):
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
    adv, _ = ADVANTAGES.build(name, kwargs, max_len=3, total_steps=10, group_size=4)(_batch(rewards, ids))
    assert adv.shape == (len(rewards), 3) and torch.isfinite(adv).all()
    singleton = (ids == 10).nonzero().item()
    if name in ("grpo", "rloo", "beta_norm"):       # a group of one has no baseline: documented A = 0
        assert adv[singleton].abs().max() == 0
    if name == "grpo" and not kwargs:               # equals the functional form on the same groups
        assert torch.allclose(adv[:, 0], F.grpo_advantages(rewards, ids))


def test_mean_objective_is_the_identity_on_variable_groups():
    rewards, ids = grouped(1)
    assert torch.equal(OBJECTIVES.build("mean", {})(rewards, ids), rewards)
