"""sampler: dynamic (DAPO dynamic sampling): exact constant-group check on the success signal, refill rounds,
which groups are kept, and the metrics."""

import numpy as np
import pytest

from rlkit.plugins import load_builtins

from rlkit.registry import SAMPLERS
from rlkit.rollout import Completion
from rlkit.samplers import RolloutPool
from rlkit.samplers.dynamic import informative

load_builtins()
NAN = float("nan")


def test_exact_check_has_no_float_noise():
    assert np.std([0.1, 0.1, 0.1]) > 0                      # the float-noise filter bug rlkit avoids
    assert not informative([NAN] * 3, [0.1, 0.1, 0.1])      # identical shaped rewards: constant
    assert not informative([1.0, 1.0, 1.0], [1.0, 0.7, 1.2])  # success constant: dropped whatever the reward
    assert informative([1.0, 0.0, 1.0], [1.1, 1.1, 1.1])    # success varies: kept even if the reward does not
    assert not informative([1.0, NAN], [1.0, 0.0])          # one valid success value: constant
    assert informative([NAN, NAN], [0.3, 0.30000000000000004])   # no success signal: exact reward comparison


def _add(pool: RolloutPool, prompt: int, success: list[float], rnd: int) -> None:
    for s in success:
        pool.prompt_index.append(prompt)
        pool.completions.append(Completion([5], [0.0], "stop"))
        pool.round_index.append(rnd)
        pool.rewards.append(s)
        pool.success.append(s)
        pool.components.append([s])
        pool.completion_texts.append("x")


def test_refills_until_enough_informative_groups():
    sampler = SAMPLERS.build("dynamic", {"oversample": 3, "max_resample_rounds": 4}, group_size=2)
    assert sampler.prompts_needed(2) == 6
    pool = RolloutPool(prompts=list(range(6)))
    assert sampler.allocate(pool.prompts, 2) == [2, 2, 0, 0, 0, 0]
    _add(pool, 0, [1.0, 1.0], 0)                            # constant: filtered
    _add(pool, 1, [1.0, 0.0], 0)                            # informative
    # found 1 of 2 after 2 groups (rate 1/2): deficit 1 / rate -> 2 more prompts
    assert sampler.next_round(pool) == [0, 0, 2, 2, 0, 0]
    _add(pool, 2, [0.0, 1.0], 1)
    _add(pool, 3, [0.0, 0.0], 1)
    assert sampler.next_round(pool) == []
    rows = sampler.finalize(pool)
    assert rows == [2, 3, 4, 5]                              # the rows of prompts 1 and 2
    m = sampler.step_metrics()
    assert m == {"filtered_frac": 0.5, "extra_rollouts": 4.0, "informative_groups": 2.0, "rounds": 2.0,
                 "no_signal": 0.0}


def test_stops_after_max_rounds_and_keeps_round_zero_when_nothing_is_informative():
    sampler = SAMPLERS.build("dynamic", {"oversample": 2, "max_resample_rounds": 1}, group_size=2)
    pool = RolloutPool(prompts=list(range(4)))
    sampler.allocate(pool.prompts, 2)
    _add(pool, 0, [1.0, 1.0], 0)
    _add(pool, 1, [0.0, 0.0], 0)
    assert sampler.next_round(pool) == [0, 0, 2, 2]         # rate 0: every candidate left
    _add(pool, 2, [1.0, 1.0], 1)
    _add(pool, 3, [1.0, 1.0], 1)
    assert sampler.next_round(pool) == []                   # max_resample_rounds reached (and none left)
    assert sampler.finalize(pool) == [0, 1, 2, 3]           # round-0 groups: zero advantages, no update
    assert sampler.step_metrics()["no_signal"] == 1.0 and sampler.step_metrics()["filtered_frac"] == 1.0


def test_bad_options_are_named():
    with pytest.raises(Exception, match="oversample=0"):
        SAMPLERS.build("dynamic", {"oversample": 0})
    with pytest.raises(Exception, match="sampler.n=1"):
        SAMPLERS.build("dynamic", {"n": 1})
