"""Every policy loss composes with the entropy bonus, the KL loss, D³S selection, train-inference mismatch
correction and 2 optimizer steps per batch: one real step each on the tiny model, with finite, non-zero losses
and every loss's metrics logged."""

from __future__ import annotations

import json
import math

import pytest

from rlkit.config import load_config
from rlkit.trainer import train
from tests.conftest import recipe_dict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

POLICY = {"ppo_clip": {"tis_cap": 2.0}, "gspo": {"tis_cap": 2.0, "level": "token"}, "cispo": {"mis_high": 5.0},
          "clip_cov": {"ratio": 0.05, "lb": 0.0}, "kl_cov": {"ratio": 0.05}}
METRIC = {"ppo_clip": "clip_frac", "gspo": "seq_ratio_mean", "cispo": "ratio_mean", "clip_cov": "clip_cov_frac",
          "kl_cov": "kl_cov_frac"}


@pytest.mark.parametrize("policy", list(POLICY))
def test_policy_loss_composes(policy, tiny_model_dir, arith_data, tmp_path):
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=2, eval_at_start=False, save_every=0,
                      prompts_per_step=4, mini_batches=2)
    cfg["rollout"] = {"n": 4, "max_new_tokens": 6, "temperature": 1.0, "engine": "hf"}
    cfg["losses"] = [{"name": policy, **POLICY[policy]}, {"name": "entropy", "coef": 0.01},
                     {"name": "kl", "beta": 0.01}]
    cfg["selection"] = {"name": "d3s"}
    train(load_config(None, [], base=cfg))
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss/total" in r][-1]
    assert math.isfinite(last["loss/total"]) and last["loss/total"] != 0.0
    for key in (METRIC[policy], "entropy_bonus", "kl"):
        assert math.isfinite(last[f"loss/{key}"]), key
