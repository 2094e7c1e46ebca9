"""rlkit.build.Plugins (the selection with train.mask_truncated, the declared advantage outputs a loss consumes),
rlkit.stopwatch.Stopwatch and rlkit.rollout.canary.Canary's schedule."""

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.build import build_plugins
from rlkit.config import load_config
from rlkit.rollout.canary import Canary
from rlkit.stopwatch import Stopwatch


def _recipe(**over) -> dict:
    tree = {"model": {"name_or_path": "unused"}, "data": {"train": "unused.jsonl"},
            "reward": {"functions": [{"name": "exact_match"}]}}
    for key, value in over.items():
        tree[key] = value
    return tree


def _batch() -> RolloutBatch:
    # 3 completions of lengths 3, 2, 3; the second was cut at max_new_tokens
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    return RolloutBatch(prompt_ids=[[1]] * 3, response_ids=torch.ones(3, 3, dtype=torch.long), response_mask=mask,
                        rollout_logprobs=torch.zeros(3, 3), truncated=torch.tensor([False, True, False]),
                        group_ids=torch.zeros(3, dtype=torch.long), rewards=torch.zeros(3),
                        success=torch.zeros(3), reward_components=torch.zeros(3, 1))


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_mask_truncated_is_applied_after_the_selection(mask_truncated):
    plugins = build_plugins(load_config(None, [f"train.mask_truncated={str(mask_truncated).lower()}"],
                                        base=_recipe()))
    weights, metrics = plugins.select(_batch(), progress=0.0)
    kept = [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0] if mask_truncated else [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    assert weights.tolist() == kept
    assert metrics.get("truncated_masked_frac") == (pytest.approx(1 / 3) if mask_truncated else None)


def test_a_loss_that_consumes_returns_needs_an_estimator_that_writes_them():
    tree = _recipe(losses=[{"name": "ppo_clip"}, {"name": "value"}], critic={"lr": 1e-5})
    with pytest.raises(ValueError, match=r"loss 'value' trains on \['returns'\].*advantage 'grpo'.*advantage: gae"):
        build_plugins(load_config(None, base=tree))
    plugins = build_plugins(load_config(None, base={**tree, "advantage": "gae"}))
    assert plugins.advantage.outputs == {"returns"} and plugins.losses[1].consumes == {"returns"}


def test_stopwatch_sums_repeated_stages_and_reports_the_whole_step():
    watch = Stopwatch()
    for _ in range(2):
        with watch("score"):
            pass
    with pytest.raises(RuntimeError), watch("train"):   # a failing stage is still timed
        raise RuntimeError("boom")
    out = watch.metrics()
    assert set(out) == {"time/score", "time/train", "time/step"}
    assert out["time/step"] >= out["time/score"] + out["time/train"] >= 0.0


def test_canary_runs_every_kth_sync_or_never():
    assert [Canary(([1], [2]), pad_id=0, every=2).due(v) for v in range(1, 5)] == [False, True, False, True]
    assert not any(Canary(([1], [2]), pad_id=0, every=0).due(v) for v in range(1, 5))
