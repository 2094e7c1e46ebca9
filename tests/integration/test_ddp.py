"""Two-process data parallel (accelerate launch, gloo on CPU) gives the same losses and parameters as one process.

accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (see launch/cpu_2proc.yaml), so the two ranks are
started with `--multi_gpu` and ACCELERATE_USE_CPU=1, and every run asserts from its log that it had 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import accelerate_cpu_cmd, recipe_dict

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def _launch(recipe, procs: int, timeout: int = 600) -> None:
    if procs == 1:
        cmd = [sys.executable, "-m", "rlkit.cli", "train", str(recipe)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    else:
        cmd, env = accelerate_cpu_cmd(procs, 29517)
        cmd += ["train", str(recipe)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-6000:]
    kind = "NO" if procs == 1 else "MULTI_CPU"
    assert f"training on {procs} process(es) ({kind}" in proc.stdout + proc.stderr, proc.stderr[-3000:]


# token-budget micro-batches (the default auto budget, padded; and packed): the processes form different numbers of
# micro-batches (the one with fewer adds zero-weight backward calls) and the chunked LM head runs inside DDP's
# forward; the result must not change
# kl_cov: its covariance means and top-k threshold are gathered over both processes (Loss.prepare), so the 2-process
# run selects the same tokens as the 1-process one
@pytest.mark.parametrize("micro", [{}, {"max_tokens_per_micro": 30, "pack_sequences": True}, {"losses": "kl_cov"}],
                         ids=["auto", "packed", "kl_cov"])
def test_two_processes_match_one(tiny_model_dir, arith_data, tmp_path, micro):
    micro = dict(micro)
    losses = [{"name": "kl_cov", "ratio": 0.05}] if micro.pop("losses", None) else None
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        cfg = recipe_dict(tiny_model_dir, arith_data, out, steps=2, prompts_per_step=4, micro_batch_size=3,
                          mini_batches=2, adam_eps=1e-4, **micro)  # adam_eps: see test_train_cpu.INVARIANCE
        cfg["rollout"]["n"] = 4
        cfg["aggregation"] = "seq_mean_token_sum"  # loss = -mean_i A_i * L_i: clearly non-zero, unlike token_mean
        if losses:
            cfg["losses"] = losses
        (tmp_path / f"r{procs}.yaml").write_text(yaml.safe_dump(cfg))
        _launch(tmp_path / f"r{procs}.yaml", procs)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss/total" in r]
        if losses:
            assert all(r["loss/kl_cov_frac"] > 0 for r in steps)
        runs[procs] = ({k: [r[k] for r in steps] for k in ("loss/total", "reward/mean", "loss/entropy")},
                       load_file(str(out / "final/model.safetensors")))
    (m1, p1), (m2, p2) = runs[1], runs[2]
    assert len(m1["loss/total"]) == 2 and min(abs(x) for x in m1["loss/total"]) > 1e-3
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-5), key   # fp32 sums in another order
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.allclose(init[k], p1[k], atol=1e-4) for k in p1), "parameters did not move"
    for k in p1:
        assert torch.allclose(p1[k], p2[k], atol=1e-5), (k, (p1[k] - p2[k]).abs().max().item())


def test_critic_trains_under_ddp_like_one_process(tiny_model_dir, arith_data, tmp_path):
    """PPO-GAE with a separate critic: 2 processes give the policy and critic of 1 process (whitening off, since
    it is per process)."""
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        cfg = recipe_dict(tiny_model_dir, arith_data, out, steps=2, prompts_per_step=4, micro_batch_size=3,
                          mini_batches=2, adam_eps=1e-4)
        cfg["advantage"] = {"name": "gae", "whiten": False, "lam": 0.9}
        cfg["losses"] = [{"name": "ppo_clip"}, {"name": "value", "clip": 0.5}]
        cfg["critic"] = {"lr": 1e-3, "adam_eps": 1e-4}
        cfg["aggregation"] = "seq_mean_token_sum"
        (tmp_path / f"r{procs}.yaml").write_text(yaml.safe_dump(cfg))
        _launch(tmp_path / f"r{procs}.yaml", procs)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "loss/total" in r]
        runs[procs] = ({k: [r[k] for r in steps] for k in ("loss/total", "loss/value_loss")},
                       load_file(str(out / "final/critic.safetensors")))
    (m1, c1), (m2, c2) = runs[1], runs[2]
    assert min(m1["loss/value_loss"]) > 1e-4
    for key in m1:
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-5), key   # fp32 sums in another order
    assert any(c1[k].abs().sum() > 0 for k in c1 if "value_head" in k)     # the zero-initialised head moved
    for k in c1:
        assert torch.allclose(c1[k], c2[k], atol=1e-5), (k, (c1[k] - c2[k]).abs().max().item())
