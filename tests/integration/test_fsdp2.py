"""FSDP2 through `accelerate launch --config_file launch/fsdp2.yaml`: a run on N GPUs (N = min(2, GPUs)) gives the
losses and final weights of one plain process; its sharded checkpoint resumes like an uninterrupted run; the
rollout engine's weight sync (canary on every step) sees the trained weights.

Needs CUDA. accelerate 1.15 turns on FSDP only for GPU-like devices: with an FSDP config and no GPU every process
runs alone (rlkit.dist.check_launch refuses it with "started N processes but each one runs alone"); torch's
fully_shard itself works on CPU with gloo and is tested in tests/integration/test_fsdp2_cpu.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import recipe_dict

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="FSDP under accelerate 1.15 needs CUDA: AcceleratorState enables "
                                        "DistributedType.FSDP only on GPU-like devices, never with --cpu/MULTI_CPU")]


def _run(recipe: Path, procs: int | None, *overrides: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if procs is None:                                   # plain single process
        cmd = [sys.executable, "-m", "rlkit.cli", "train", str(recipe), *overrides]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch/fsdp2.yaml"),
               "--num_processes", str(procs), "--mixed_precision", "no", "--main_process_port", "29531",
               "-m", "rlkit.cli", "train", str(recipe), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _metrics(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss/total" in r]


def test_fsdp2_matches_one_process_and_resumes(tiny_model_dir, arith_data, tmp_path):
    procs = min(2, torch.cuda.device_count())
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "unused", steps=3, prompts_per_step=4,
                      micro_batch_size=3, mini_batches=2, adam_eps=1e-4)
    cfg["aggregation"] = "seq_mean_token_sum"
    cfg["rollout"].update(engine="hf", canary_every=1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    out = {name: tmp_path / name for name in ("plain", "fsdp", "split")}
    _run(recipe, None, f"train.output_dir={out['plain']}")
    _run(recipe, procs, f"train.output_dir={out['fsdp']}")
    _run(recipe, procs, f"train.output_dir={out['split']}", "train.steps=2")        # then resume to 3
    ckpt = out["split"] / "checkpoints/step_000002"
    assert any("pytorch_model_fsdp" in p.name or p.is_dir() for p in ckpt.iterdir()), sorted(ckpt.iterdir())
    _run(recipe, procs, f"train.output_dir={out['split']}")
    plain, fsdp, split = (_metrics(out[k]) for k in ("plain", "fsdp", "split"))
    for key in ("loss/total", "reward/mean"):
        assert [r[key] for r in fsdp] == pytest.approx([r[key] for r in plain], abs=1e-4), key
        assert split[-1][key] == pytest.approx(fsdp[-1][key], abs=1e-4), key   # resumed step 3 == uninterrupted
    assert all(r["rollout/canary_diff"] < 1e-3 for r in fsdp if "rollout/canary_diff" in r)
    p0, p1 = (load_file(str(out[k] / "final/model.safetensors")) for k in ("plain", "fsdp"))
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.allclose(p0[k].float(), p1[k].float(), atol=1e-4), k
