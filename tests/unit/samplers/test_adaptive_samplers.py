"""sampler: gvm, reinforce_ada, vade driven through the sampler protocol with scripted outcomes (no model).

``drive`` plays the trainer's part exactly as ``rlkit.rollout.collect.collect_rollouts`` does: begin, allocate,
rounds of next_round, finalize, pool_stats -> build_batch."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit import functional as F
from rlkit.data import PromptItem
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, SAMPLERS
from rlkit.rollout import Completion
from rlkit.rollout.collect import build_batch
from rlkit.samplers import RolloutPool, SamplerTools

load_builtins()


def items(rows: list[int]) -> list[PromptItem]:
    return [PromptItem(index=i, prompt=f"p{i}", prompt_ids=[1, i + 2]) for i in rows]


def drive(sampler, prompts, outcome, *, step=0, group_size=4):
    """outcome(prompt position, k-th completion of that prompt) -> reward (also used as success)."""
    pool = RolloutPool(prompts=prompts)
    sampler.begin(step)
    counts, rnd, asked = sampler.allocate(prompts, group_size), 0, []
    while counts and any(counts):
        asked.append(list(counts))
        have = pool.counts().tolist()
        for p, c in enumerate(counts):
            for j in range(c):
                r = outcome(p, have[p] + j)
                pool.prompt_index.append(p)
                pool.completions.append(Completion([p + 10, have[p] + j + 10], [0.0, 0.0], "stop"))
                pool.round_index.append(rnd)
                pool.rewards.append(r)
                pool.success.append(r)
                pool.components.append([r])
                pool.completion_texts.append(f"{p}:{have[p] + j}")
        rnd += 1
        counts = sampler.next_round(pool)
    rows = sampler.finalize(pool)
    batch = build_batch(pool, rows, list(range(100, 100 + len(prompts))), 0, sampler.pool_stats(pool))
    return pool, rows, batch, asked


# ------------------------------------------------------------------------------------------------ GVM


def fake_tools(norm_of_prompt: dict[int, float], calls: list):
    """Gradient norm of a sequence = the value scripted for its dataset row (prompt_ids[1] - 2)."""
    def grad_norms(prompt_ids, responses, pattern):
        calls.append((len(prompt_ids), pattern))
        return torch.tensor([norm_of_prompt[p[1] - 2] for p in prompt_ids])
    return SamplerTools(grad_norms=grad_norms)


def test_gvm_probe_then_allocation_by_hand():
    # probe 4 per prompt; success pattern: prompt 0 accepts 1/4, prompt 1 accepts 4/4, prompt 2 accepts 0/4
    # G = [2, 1, (none)] ; alpha = 0 -> w = G / sqrt(p) = [2/0.5, 1/1, 0] = [4, 1, 0] -> budget 3 * 5 = 15 -> [12, 3, 0]
    calls: list = []
    sampler = SAMPLERS.build("gvm", {"probe_n": 4, "alpha": 0.0, "budget_per_prompt": 5}, group_size=4)
    sampler.bind(fake_tools({7: 2.0, 8: 1.0, 9: 9.0}, calls))
    accept = {0: [1, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0]}
    pool, rows, batch, asked = drive(sampler, items([7, 8, 9]),
                                     lambda p, k: float(accept[p][k]) if k < 4 else 1.0)
    assert asked == [[4, 4, 4], [12, 3, 0]]
    assert calls == [(5, "embed_tokens")]               # one gradient per accepted probe sample: 1 + 4 + 0
    assert rows == list(range(12, 27))                  # round 1 only: probe samples are not trained on
    assert batch.group_ids.tolist() == [100] * 12 + [101] * 3
    assert batch.dataset_index.tolist() == [7] * 12 + [8] * 3
    m = sampler.step_metrics()
    assert m["probe_rollouts"] == 12 and m["skipped_prompts"] == 1 and m["alloc_max"] == 12 and m["alloc_min"] == 3
    assert m["accept_rate"] == pytest.approx((0.25 + 1 + 0) / 3) and m["grad_norm"] == pytest.approx(1.5)
    assert sampler.state_dict()["estimates"] == {7: [0.25, 2.0, 0], 8: [1.0, 1.0, 0], 9: [0.0, 0.0, 0]}


def test_gvm_max_accept_drops_prompts_the_probe_solved():
    # as above, with max_accept 0.99: prompt 1 accepted 4/4 (p = 1 > 0.99) -> weight 0 -> w = [4, 0, 0] -> [15, 0, 0]
    sampler = SAMPLERS.build("gvm", {"probe_n": 4, "alpha": 0.0, "budget_per_prompt": 5, "max_accept": 0.99},
                             group_size=4)
    sampler.bind(fake_tools({7: 2.0, 8: 1.0, 9: 9.0}, []))
    accept = {0: [1, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0]}
    _, _, batch, asked = drive(sampler, items([7, 8, 9]), lambda p, k: float(accept[p][k]) if k < 4 else 1.0)
    assert asked == [[4, 4, 4], [15, 0, 0]]
    assert batch.dataset_index.tolist() == [7] * 15
    assert sampler.step_metrics()["skipped_prompts"] == 2
    with pytest.raises(ValueError, match="max_accept=1.5"):
        SAMPLERS.build("gvm", {"max_accept": 1.5})


def test_gvm_refresh_reuses_estimates_and_train_on_probe():
    calls: list = []
    sampler = SAMPLERS.build("gvm", {"probe_n": 2, "refresh_steps": 3, "train_on_probe": True}, group_size=2)
    sampler.bind(fake_tools({0: 1.0, 1: 1.0, 5: 1.0}, calls))
    outcome = lambda p, k: float(k % 2)  # noqa: E731  half accepted everywhere -> equal weights -> [2, 2]
    _, rows, _, asked = drive(sampler, items([0, 1]), outcome, step=0, group_size=2)
    assert asked == [[2, 2], [2, 2]] and rows == list(range(8))  # probe rows trained too
    _, _, _, asked = drive(sampler, items([0, 1]), outcome, step=2, group_size=2)  # still fresh: no probe
    assert asked == [[2, 2]] and len(calls) == 1
    _, _, _, asked = drive(sampler, items([1, 5]), outcome, step=3, group_size=2)  # row 1 stale, row 5 new
    assert asked[0] == [2, 2] and len(calls) == 2
    restored = SAMPLERS.build("gvm", {"probe_n": 2, "refresh_steps": 3}, group_size=2)
    restored.load_state_dict(sampler.state_dict())
    assert restored.estimates == sampler.estimates


def test_gvm_without_accepted_samples_falls_back_to_uniform():
    sampler = SAMPLERS.build("gvm", {"probe_n": 2}, group_size=3)
    sampler.bind(fake_tools({}, []))
    _, _, batch, asked = drive(sampler, items([0, 1]), lambda p, k: 0.0, group_size=3)
    assert asked == [[2, 2], [3, 3]]                    # all ratios zero: uniform 6 / 2
    assert len(batch) == 6


def test_gvm_bad_options_are_named():
    with pytest.raises(Exception, match="probe_n=0"):
        SAMPLERS.build("gvm", {"probe_n": 0})
    with pytest.raises(Exception, match="alpha"):
        SAMPLERS.build("gvm", {"alpha": -1.0})


# ---------------------------------------------------------------------------------------- Reinforce-Ada


def test_reinforce_ada_rounds_exit_and_balanced_groups():
    # n = 4 (2 pos + 2 neg to exit), M = 4, 3 rounds. Rewards per prompt in generation order:
    #   p0: 1,0,1,0 -> exits after round 1
    #   p1: 0,0,0,0 | 0,1,0,0 | 1,0,0,0 -> exits after round 3 (2 positives), kept: first 2 pos + first 2 neg
    #   p2: all 1 -> never exits, 12 samples, keeps 4 positives
    script = {0: [1, 0, 1, 0], 1: [0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0], 2: [1] * 12}
    sampler = SAMPLERS.build("reinforce_ada", {"rounds": 3, "round_repeat": 4}, group_size=4)
    pool, rows, batch, asked = drive(sampler, items([0, 1, 2]), lambda p, k: float(script[p][k]))
    assert asked == [[4, 4, 4], [0, 4, 4], [0, 4, 4]]
    kept = [(pool.prompt_index[r], pool.rewards[r]) for r in rows]
    assert kept == [(0, 1.0), (0, 0.0), (0, 1.0), (0, 0.0), (1, 0.0), (1, 0.0), (1, 1.0), (1, 1.0)] + [(2, 1.0)] * 4
    # pool statistics: p0 2/4 -> mu 0.5, std sqrt(2*2/(4*3)) = 0.57735; p1 2/12 -> mu 1/6, std sqrt(2*10/(12*11));
    # p2 12/12 -> mu 1, std max(0, eps)
    assert batch.pool_mean.tolist() == pytest.approx([0.5] * 4 + [1 / 6] * 4 + [1.0] * 4)
    assert batch.pool_std.tolist() == pytest.approx([math.sqrt(1 / 3)] * 4 + [math.sqrt(20 / 132)] * 4 + [1e-6] * 4)
    m = sampler.step_metrics()
    assert m["rounds"] == 3 and m["finished_frac"] == pytest.approx(2 / 3) and m["samples_per_prompt"] == 28 / 3


def test_grpo_with_pool_stats_equals_reinforce_ada_advantages():
    script = {0: [1, 0, 0, 0, 0, 0, 0, 1], 1: [0, 1, 1, 1, 1, 1, 1, 1]}   # both unfinished after 1 round
    sampler = SAMPLERS.build("reinforce_ada", {"rounds": 2, "round_repeat": 4}, group_size=4)
    _, _, batch, _ = drive(sampler, items([0, 1]), lambda p, k: float(script[p][k]))
    for scale, norm in (("none", False), ("group", True)):
        adv, _ = ADVANTAGES.build("grpo", {"scale": scale})(batch)
        expected = torch.cat([F.reinforce_ada_advantages(batch.rewards[:4], 2, 6, norm_by_std=norm),
                              F.reinforce_ada_advantages(batch.rewards[4:], 7, 1, norm_by_std=norm)])
        assert adv[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    # scale none by hand: p0 mu = 2/8 -> kept [1, 0, 0, 1] -> [0.75, -0.25, -0.25, 0.75]
    adv, _ = ADVANTAGES.build("grpo", {"scale": "none"})(batch)
    assert adv[:4, 0].tolist() == pytest.approx([0.75, -0.25, -0.25, 0.75])


def test_reinforce_ada_positive_focused_and_local_stats():
    sampler = SAMPLERS.build("reinforce_ada", {"rounds": 2, "round_repeat": 2, "rule": "positive_focused",
                                               "global_stats": False}, group_size=2)
    _, rows, batch, asked = drive(sampler, items([0, 1]), lambda p, k: float(p == 0 and k == 0), group_size=2)
    assert asked == [[2, 2], [0, 2]]                    # p0 has a positive after round 1
    assert batch.pool_mean is None and len(rows) == 4


def test_reinforce_ada_chain_errors_name_the_fix():
    from rlkit.build import build_plugins
    from rlkit.config import RecipeConfig
    base = {"model": {"name_or_path": "x"}, "data": {"train": "x.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}, "sampler": {"name": "reinforce_ada"}}
    with pytest.raises(ValueError, match="advantage 'rloo' cannot use it"):
        build_plugins(RecipeConfig.model_validate({**base, "advantage": "rloo"}))
    with pytest.raises(ValueError, match="objective 'max_at_k' transforms the rewards"):
        build_plugins(RecipeConfig.model_validate({**base, "objective": {"name": "max_at_k", "k": 2,
                                                                         "baseline": "none"}}))
    build_plugins(RecipeConfig.model_validate({**base, "advantage": "rloo",
                                               "sampler": {"name": "reinforce_ada", "global_stats": False}}))
    with pytest.raises(Exception, match="round_repeat=2 must be >= the effective group size n=4"):
        SAMPLERS.build("reinforce_ada", {"round_repeat": 2}).allocate(items([0]), 4)


# ------------------------------------------------------------------------------------------------ VADE


def test_vade_draws_candidates_and_picks_by_thompson_score():
    sampler = SAMPLERS.build("vade", {"candidates": 2, "lam_global": 1.0}, group_size=4, seed=3)
    assert sampler.prompts_needed(2) == 4
    # peaked posteriors: rows 0 and 3 near p = 0.5, row 1 near 1, row 2 near 0 -> the variance score picks 0 and 3
    sampler.posteriors = {0: (500.0, 500.0, 0), 1: (999.0, 1.0, 0), 2: (1.0, 999.0, 0), 3: (400.0, 400.0, 0)}
    _, rows, batch, asked = drive(sampler, items([0, 1, 2, 3]), lambda p, k: float(k % 2), step=1)
    assert asked == [[4, 0, 0, 4]] and sorted(set(batch.dataset_index.tolist())) == [0, 3]
    m = sampler.step_metrics()
    assert m["seen_frac"] == 1.0 and m["chosen_mean"] == pytest.approx(0.5)
    assert m["candidates_mean"] == pytest.approx((0.5 + 0.999 + 0.001 + 0.5) / 4)
    # update after the step, lam_local 0.9, 2 successes + 2 failures each:
    #   row 0: a = 0.9 * 500 + 0.1 * 1 + 2 = 452.1, b = 452.1 ; row 3: 0.9 * 400 + 0.1 + 2 = 362.1
    batch.success = batch.raw_rewards.clone()
    sampler.update(batch, step=1)
    assert sampler.posteriors[0] == pytest.approx((452.1, 452.1, 1))
    assert sampler.posteriors[3] == pytest.approx((362.1, 362.1, 1))
    assert sampler.posteriors[1] == (999.0, 1.0, 0)              # not trained: untouched (decay stays lazy)


def test_vade_global_decay_before_the_draw_and_before_new_evidence():
    sampler = SAMPLERS.build("vade", {"lam_global": 0.5, "lam_local": 0.9}, group_size=2)
    sampler.posteriors = {7: (5.0, 1.0, 2)}
    a, b = sampler._decayed([7, 8], step=4)                      # Δ = 2: 1 + 0.25 * 4 = 2, 1 + 0.25 * 0 = 1
    assert a.tolist() == [2.0, 1.0] and b.tolist() == [1.0, 1.0]   # row 8 unseen: the prior
    batch = build_batch(_pool_with(7, [1.0, 0.0]), [0, 1], [0], 0)
    sampler.update(batch, step=4)                                # decay to (2, 1), then 0.9 * 2 + 0.1 + 1 = 2.9
    assert sampler.posteriors[7] == pytest.approx((2.9, 0.9 * 1 + 0.1 + 1, 4))


def _pool_with(row: int, rewards: list[float]) -> RolloutPool:
    pool = RolloutPool(prompts=items([row]))
    for r in rewards:
        pool.prompt_index.append(0)
        pool.completions.append(Completion([5], [0.0], "stop"))
        pool.round_index.append(0)
        pool.rewards.append(r)
        pool.success.append(float("nan"))                        # no success signal: the reward is the outcome
        pool.components.append([r])
        pool.completion_texts.append("x")
    return pool


def test_vade_state_round_trip_reproduces_the_draws():
    a = SAMPLERS.build("vade", {}, group_size=2, seed=11)
    a.posteriors = {i: (1.0 + i, 3.0, 0) for i in range(6)}
    b = SAMPLERS.build("vade", {}, group_size=2, seed=99)
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        s.begin(5)
    assert a.allocate(items(range(6)), 2) == b.allocate(items(range(6)), 2)
    assert a.step_metrics() == b.step_metrics()


def test_vade_rejects_rewards_outside_unit_interval():
    sampler = SAMPLERS.build("vade", {}, group_size=2)
    batch = build_batch(_pool_with(0, [2.0, 0.0]), [0, 1], [0], 0)
    with pytest.raises(ValueError, match="outcomes in \\[0, 1\\].*got reward 2.0"):
        sampler.update(batch, step=0)
    with pytest.raises(Exception, match="score='entropy'"):
        SAMPLERS.build("vade", {"score": "entropy"})
