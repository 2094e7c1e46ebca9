"""The adaptive samplers in the real trainer (tiny model, hf engine): VADE resumes exactly, GVM probes with the
policy's own gradients and trains variable-size groups, Reinforce-Ada runs its rounds on the engine."""

import json

import pytest
import torch

from rlkit.config import load_config
from rlkit.trainer import train
from tests.conftest import recipe_dict

pytestmark = [pytest.mark.slow]


def _cfg(model, data, out, steps, sampler, **sections):
    c = recipe_dict(model, data, out, steps=steps, save_every=2, eval_at_start=False)
    c["rollout"]["engine"] = "hf"
    c["sampler"] = sampler
    return load_config(None, [], base=c | sections)


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _state(out, step):
    return torch.load(out / "checkpoints" / f"step_{step:06d}" / "trainer_state.pt", weights_only=False)


def test_vade_resume_equals_uninterrupted_run(tiny_model_dir, arith_data, tmp_path):
    # 20 data rows, 2 prompts x 2 candidates per step: every row comes back within 5 steps, so posteriors are reused
    vade = {"name": "vade", "candidates": 2}
    small = dict(arith_data)
    rows = (arith_data["train"]).read_text().splitlines()[:20]
    small["train"] = tmp_path / "train.jsonl"
    small["train"].write_text("\n".join(rows) + "\n")
    full = train(_cfg(tiny_model_dir, small, tmp_path / "full", 8, vade))
    train(_cfg(tiny_model_dir, small, tmp_path / "part", 4, vade))
    part = train(_cfg(tiny_model_dir, small, tmp_path / "part", 8, vade))   # resume=auto from step 4
    a, b = _state(tmp_path / "full", 8)["plugins"]["sampler"], _state(tmp_path / "part", 8)["plugins"]["sampler"]
    assert a == b and len(a["posteriors"]) >= 10
    assert any(v[2] < 7 for v in a["posteriors"].values())          # some rows were last seen steps ago
    # the prompts chosen after the resume equal the uninterrupted run's (posteriors record every row trained and
    # when; the logged draws and scores of every step match)
    keys = ("sampler/chosen_draw", "sampler/chosen_score", "sampler/chosen_mean", "reward/mean")
    steps = lambda out: [tuple(r[k] for k in keys) for r in _rows(out) if "sampler/chosen_draw" in r]  # noqa: E731
    assert steps(tmp_path / "full")[4:] == steps(tmp_path / "part")[4:]
    assert full["loss/total"] == part["loss/total"]


def test_gvm_probes_policy_gradients_and_trains_variable_groups(tiny_model_dir, arith_data, tmp_path):
    gvm = {"name": "gvm", "probe_n": 4, "correct_threshold": 0.1}   # digit-fraction reward: most answers accepted
    train(_cfg(tiny_model_dir, arith_data, tmp_path / "gvm", 2, gvm))
    rows = [r for r in _rows(tmp_path / "gvm") if "sampler/probe_rollouts" in r]
    assert [r["sampler/probe_rollouts"] for r in rows] == [16.0, 16.0]           # 4 prompts x probe_n
    assert all(r["rollout/generated"] == 16 + 16 for r in rows)                  # probe + a budget of 4 x 4
    assert all(r["rollout/completions"] == 16 for r in rows)                     # only the allocation is trained
    assert all(r["sampler/grad_norm"] > 0 and r["sampler/probe_grad_s"] > 0 for r in rows)
    state = _state(tmp_path / "gvm", 2)["plugins"]["sampler"]["estimates"]
    assert len(state) == 8 and all(0 <= p <= 1 and g >= 0 for p, g, _ in state.values())


def test_reinforce_ada_rounds_on_the_engine(tiny_model_dir, arith_data, tmp_path):
    ada = {"name": "reinforce_ada", "rounds": 3, "round_repeat": 4, "threshold": 0.5}
    train(_cfg(tiny_model_dir, arith_data, tmp_path / "ada", 2, ada, advantage={"name": "grpo", "scale": "none"}))
    rows = [r for r in _rows(tmp_path / "ada") if "sampler/rounds" in r]
    for r in rows:
        assert 1 <= r["sampler/rounds"] <= 3 and r["rollout/rounds"] == r["sampler/rounds"]
        assert r["rollout/generated"] == 4 * r["sampler/samples_per_prompt"]
        assert r["rollout/completions"] == 16                                   # n = 4 kept per prompt
