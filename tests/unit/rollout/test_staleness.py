"""The asynchronous-rollout schedule (rlkit/rollout/prefetch.py): which steps are launched when, the policy
version v(s) = max(0, s - k) behind each step's batch, and what a checkpoint carries across a resume.

The expected tables are written out by hand; the loop in :func:`_simulate` mirrors the trainer's order of calls
(take or generate now, launch, [train], wait, sync to version s+1)."""

from __future__ import annotations

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.config import RolloutConfig
from rlkit.rollout.prefetch import RolloutPrefetcher, generation_version, steps_to_launch


def _batch(tag: int) -> RolloutBatch:
    z = torch.zeros(1, 1)
    return RolloutBatch(prompt_ids=[[tag]], response_ids=z.long(), response_mask=z.bool(), rollout_logprobs=z,
                        truncated=torch.zeros(1, dtype=torch.bool), group_ids=torch.zeros(1, dtype=torch.long),
                        rewards=torch.zeros(1), success=torch.zeros(1), reward_components=z)


def _simulate(k: int, total: int, start: int = 0, prefetch: RolloutPrefetcher | None = None, stop: int | None = None):
    """Run steps start..stop-1 as the trainer does; returns (prefetcher, launched per step, version per step)."""
    prefetch = prefetch or RolloutPrefetcher(k, total)
    engine = {"version": start}     # the engine holds version s during step s
    gen = lambda t: (_batch(t), {"version": float(engine["version"])})   # noqa: E731
    launched, versions = {}, {}
    for step in range(start, total if stop is None else stop):
        ready = prefetch.take(step)
        if ready is None:
            batch, metrics = gen(step)
            versions[step] = engine["version"]
        else:
            batch, metrics = ready.batch, ready.metrics
            versions[step] = ready.version
            assert metrics["version"] == ready.version            # generated while the engine held that version
        assert batch.prompt_ids == [[step]]                       # the batch generated for this very step
        launched[step] = prefetch.launch(step, gen)
        prefetch.wait()                                           # before the sampler update and the sync
        engine["version"] = step + 1                              # finish_step: sync to version step+1
    return prefetch, launched, versions


@pytest.mark.parametrize("k, total, launched", [
    (0, 4, {0: [], 1: [], 2: [], 3: []}),
    (1, 4, {0: [1], 1: [2], 2: [3], 3: []}),
    (2, 6, {0: [1, 2], 1: [3], 2: [4], 3: [5], 4: [], 5: []}),
    (3, 6, {0: [1, 2, 3], 1: [4], 2: [5], 3: [], 4: [], 5: []}),
    (3, 2, {0: [1], 1: []}),            # train.steps smaller than k
    (2, 1, {0: []}),
])
def test_launch_schedule_and_versions(k, total, launched):
    ahead = lambda s: range(s + 1, s + k) if s else ()   # noqa: E731  (ready when step s starts)
    assert {s: steps_to_launch(s, k, total, ahead(s)) for s in range(total)} == launched
    _, got, versions = _simulate(k, total)
    assert got == launched
    assert versions == {s: max(0, s - k) for s in range(total)}
    assert versions == {s: generation_version(s, k) for s in range(total)}


def test_generation_version_by_hand():
    assert [generation_version(s, 0) for s in range(5)] == [0, 1, 2, 3, 4]
    assert [generation_version(s, 1) for s in range(5)] == [0, 0, 1, 2, 3]
    assert [generation_version(s, 2) for s in range(5)] == [0, 0, 0, 1, 2]
    assert [generation_version(s, 3) for s in range(5)] == [0, 0, 0, 0, 1]


def test_step_zero_launches_everything_missing():
    assert steps_to_launch(0, 3, 10) == [1, 2, 3]
    assert steps_to_launch(4, 3, 10, ready=[5, 6]) == [7]
    assert steps_to_launch(4, 3, 10) == [5, 6, 7]          # a resume without saved batches
    assert steps_to_launch(8, 3, 10, ready=[9]) == []       # step 11 is past train.steps


@pytest.mark.parametrize("k", [1, 2, 3])
def test_resume_takes_the_saved_batches(k):
    total, stop = 7, 3
    prefetch, _, before = _simulate(k, total, stop=stop)
    saved = prefetch.saved(stop, world_size=2)
    assert [r.step for r in saved.rollouts] == list(range(stop, min(stop + k, total)))   # steps 3..3+k-1
    resumed = RolloutPrefetcher(k, total)
    assert resumed.restore(saved, stop, world_size=2) == list(range(stop, min(stop + k, total)))
    assert resumed.missing(stop) == []
    _, _, after = _simulate(k, total, start=stop, prefetch=resumed)
    assert before | after == {s: max(0, s - k) for s in range(total)}    # as if never interrupted


def test_resume_without_saved_batches_generates_from_the_current_version():
    resumed = RolloutPrefetcher(2, 6)
    assert resumed.restore(None, 3, world_size=1) == []
    assert resumed.missing(3) == [3, 4]
    _, launched, versions = _simulate(2, 6, start=3, prefetch=resumed)
    assert launched == {3: [4, 5], 4: [], 5: []}
    assert versions == {3: 3, 4: 3, 5: 3}      # staleness 0, 1, 2: the truth, not max(0, s - k)


def test_restore_drops_what_does_not_fit():
    prefetch, _, _ = _simulate(2, 6, stop=3)
    saved = prefetch.saved(3, world_size=1)                      # steps 3 (version 1) and 4 (version 2)
    assert RolloutPrefetcher(2, 6).restore(saved, 3, world_size=2) == []     # other shares
    assert RolloutPrefetcher(1, 6).restore(saved, 3, world_size=1) == []     # both would be 2 > 1 stale
    larger = RolloutPrefetcher(3, 6)
    assert larger.restore(saved, 3, world_size=1) == [3, 4] and larger.missing(3) == [5]   # k=3 takes both
    assert RolloutPrefetcher(0, 6).restore(saved, 3, world_size=1) == []     # synchronous run
    assert RolloutPrefetcher(2, 4).restore(saved, 3, world_size=1) == [3]    # step 4 is past train.steps
    assert RolloutPrefetcher(0, 6).saved(3, world_size=1) is None            # k = 0 saves nothing


def test_interrupted_step_keeps_its_batch_unmodified():
    prefetch, _, _ = _simulate(2, 6, stop=2)
    ready = prefetch.take(2)                     # step 2 starts training on its batch, then is interrupted
    ready.batch.rewards = torch.ones(1)
    ready.metrics["rollout/staleness"] = 2.0
    saved = prefetch.saved(2, world_size=1)
    assert [(r.step, r.version) for r in saved.rollouts] == [(2, 0), (3, 1)]
    assert saved.rollouts[0].batch.rewards.tolist() == [0.0] and "rollout/staleness" not in saved.rollouts[0].metrics


def test_one_thread_at_a_time_and_errors_reach_the_trainer():
    prefetch = RolloutPrefetcher(3, 10)

    def gen(t):
        if t == 3:
            raise RuntimeError("engine lost")
        return _batch(t), {}

    assert prefetch.launch(0, gen) == [1, 2, 3]
    with pytest.raises(RuntimeError, match="already in flight"):
        prefetch.launch(0, gen)
    with pytest.raises(RuntimeError, match="engine lost"):
        prefetch.wait()
    prefetch.wait()                                                       # the error is raised once
    assert [r.step for r in prefetch.saved(1, world_size=1).rollouts] == [1, 2]   # finished batches are kept


def test_config_accepts_any_k():
    assert RolloutConfig(max_staleness=5).max_staleness == 5
    with pytest.raises(ValueError):
        RolloutConfig(max_staleness=-1)
