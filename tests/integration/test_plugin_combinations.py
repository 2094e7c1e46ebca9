"""Every registered sampler works with every objective, advantage estimator, selection and aggregation plug-in.

The full five-way cross product is built (``build_plugins`` + ``check_recipe``, no model): a combination is either
valid or refused with a ValueError that names the plug-ins involved and the fix. Every valid combination of
sampler x objective x advantage x selection then trains one real step on the tiny model (hf engine), with the
aggregation plug-ins taken in turn so that each one runs with every sampler."""

from __future__ import annotations

import itertools
import logging
import math

import pytest

from rlkit.build import build_plugins
from rlkit.config import load_config
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, AGGREGATIONS, OBJECTIVES, SAMPLERS, SELECTIONS
from rlkit.session import check_recipe
from rlkit.trainer import train
from tests.conftest import recipe_dict

load_builtins()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REQUIRED = {("objective", "max_at_k"): {"k": 2}}   # options without a default


def names(registry):
    return [n for n in registry.names() if ":" not in n]


def combo_recipe(model, data, out, sampler, objective, advantage, selection, aggregation) -> dict:
    c = recipe_dict(model, data, out, steps=1, eval_at_start=False, save_every=0, prompts_per_step=4)
    c["rollout"] = {"n": 4, "max_new_tokens": 5, "temperature": 1.0, "engine": "hf"}
    c["sampler"] = {"name": sampler}
    if sampler == "reinforce_ada":
        c["sampler"] |= {"rounds": 2, "round_repeat": 4}
    if sampler == "gvm":
        c["sampler"] |= {"probe_n": 4, "correct_threshold": 0.0}   # digit-fraction rewards: accept any digit
    c["objective"] = {"name": objective, **REQUIRED.get(("objective", objective), {})}
    c["advantage"] = advantage
    c["selection"] = selection
    c["aggregation"] = aggregation
    if advantage == "gae":
        c["critic"] = {"lr": 1e-3}
        c["losses"] = [{"name": "ppo_clip"}, {"name": "value"}]
    return c


def all_combinations():
    return list(itertools.product(names(SAMPLERS), names(OBJECTIVES), names(ADVANTAGES), names(SELECTIONS),
                                  names(AGGREGATIONS)))


def validity(c: dict) -> str | None:
    """None if the recipe builds, else the error message."""
    try:
        check_recipe(load_config(None, [], base=c), check_files=False)
    except ValueError as exc:
        return str(exc)
    return None


def test_cross_product_builds_or_names_the_conflict(tiny_model_dir, arith_data, tmp_path):
    combos = all_combinations()
    assert len(combos) >= 5 * 2 * 6 * 2 * 5
    refused = {}
    for combo in combos:
        msg = validity(combo_recipe(tiny_model_dir, arith_data, tmp_path, *combo))
        if msg is not None:
            refused[combo] = msg
            sampler, objective, advantage = combo[:3]
            named = [x for x in (sampler, objective, advantage) if f"'{x}'" in msg]
            assert len(named) >= 2, f"{combo}: the error must name the conflicting plug-ins: {msg}"
            assert any(w in msg for w in ("set `", "use `", "give the objective")), f"{combo}: no fix named: {msg}"
    # the known conflicts, and only those: objective baselines vs estimators, pool statistics vs estimators/objectives
    for (sampler, objective, advantage, _, _), msg in refused.items():
        assert objective == "max_at_k" or sampler == "reinforce_ada", msg
    assert ("fixed", "mean", "grpo", "all", "token_mean") not in refused
    assert ("reinforce_ada", "mean", "grpo", "d3s", "delta_l") not in refused


def step_combinations():
    aggregations = names(AGGREGATIONS)
    out = []
    for i, combo in enumerate(itertools.product(names(SAMPLERS), names(OBJECTIVES), names(ADVANTAGES),
                                                names(SELECTIONS))):
        out.append((*combo, aggregations[i % len(aggregations)]))
    return out


def test_every_valid_combination_trains_one_step(tiny_model_dir, arith_data, tmp_path):
    logging.disable(logging.WARNING)
    ran, failures = 0, []
    try:
        for i, combo in enumerate(step_combinations()):
            c = combo_recipe(tiny_model_dir, arith_data, tmp_path / f"run{i}", *combo)
            if validity(c) is not None:
                continue
            try:
                out = train(load_config(None, [], base=c))
            except Exception as exc:  # collect them all: one report names every broken combination
                failures.append(f"{combo}: {type(exc).__name__}: {exc}")
                continue
            ran += 1
            if not math.isfinite(out["loss/total"]):
                failures.append(f"{combo}: loss {out['loss/total']}")
    finally:
        logging.disable(logging.NOTSET)
    assert not failures, "\n".join(failures)
    assert ran >= 50, ran   # 5 samplers x 11 valid (objective, advantage) pairs x 2 selections = 110 minus conflicts


def test_sampler_combination_errors_are_raised_by_build_plugins():
    # the same checks run in `rlkit validate` (no model): reinforce_ada's pool statistics need grpo + mean
    base = {"model": {"name_or_path": "x"}, "data": {"train": "x.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}}
    with pytest.raises(ValueError, match="advantage 'beta_norm' cannot use it"):
        build_plugins(load_config(None, [], base={**base, "sampler": "reinforce_ada", "advantage": "beta_norm"}))
