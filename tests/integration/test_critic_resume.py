"""PPO-GAE state survives a resume: the critic (weights + optimizer) and the adaptive KL coefficient come back
from the checkpoint, so 2 + 2 resumed steps equal 4 uninterrupted ones exactly."""

import json

import pytest
from safetensors.torch import load_file

from rlkit.config import load_config
from rlkit.trainer import train
from tests.conftest import recipe_dict

pytestmark = [pytest.mark.slow]


def _cfg(model, data, out, steps):
    c = recipe_dict(model, data, out, steps=steps, mini_batches=2, save_every=2, adam_eps=1e-4)
    c["advantage"] = {"name": "gae", "kl_coef": 0.05, "kl_target": 0.01, "kl_horizon": 1000}
    c["losses"] = [{"name": "ppo_clip"}, {"name": "value"}]
    c["critic"] = {"lr": 1e-3}
    return load_config(None, [], base=c)


def test_critic_and_kl_controller_resume_exactly(tiny_model_dir, arith_data, tmp_path):
    train(_cfg(tiny_model_dir, arith_data, tmp_path / "full", 4))
    train(_cfg(tiny_model_dir, arith_data, tmp_path / "part", 2))
    train(_cfg(tiny_model_dir, arith_data, tmp_path / "part", 4))          # resume=auto picks up step 2
    for name in ("critic.safetensors", "model.safetensors"):
        a, b = (load_file(str(tmp_path / run / "final" / name)) for run in ("full", "part"))
        assert all((a[k] - b[k]).abs().max() == 0 for k in a), name
    coef = {run: [json.loads(x)["advantage/kl_coef"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
                  if "advantage/kl_coef" in x] for run in ("full", "part")}
    assert coef["full"] == coef["part"] and len(set(coef["full"])) == 4   # the controller moved every step
