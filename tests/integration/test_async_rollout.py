"""rollout.max_staleness: k -- later steps' batches are generated while a step trains; step s trains on a batch
from policy version max(0, s - k), exactly, and a resumed run equals an uninterrupted one.

CPU tests use tests/owns_weights_engine.py (the hf engine on its own copy of the weights, recording the version
behind every generate call); the vLLM test runs the real engine (marker ``vllm``)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import rlkit.trainer
from rlkit.config import load_config
from rlkit.rollout import completion_seed
from tests.conftest import recipe_dict
from tests.owns_weights_engine import OwnCopyEngine

ROOT = Path(__file__).resolve().parents[2]
OWN_COPY = "tests.owns_weights_engine:OwnCopyEngine"
STEPS, K = 6, 2


def _cfg(model, data, out, k=K, engine=OWN_COPY, overrides=(), **train):
    c = recipe_dict(model, data, out, **{"steps": STEPS, "save_every": 3, **train})
    c["rollout"]["engine"] = engine
    if k is not None:
        c["rollout"]["max_staleness"] = k
    return load_config(None, list(overrides), base=c)


def _rows(out):
    return [r for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()) if "loss/total" in r]


def _comparable(rows):
    """Every logged value but wall-clock ones (time, time/*, */..._s)."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/") and not k.endswith("_s")}
            for r in rows]


def _weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def _saved(out, step):
    return torch.load(out / "checkpoints" / f"step_{step:06d}" / "rollouts_rank0.pt", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, arith_data, tmp_path_factory):
    """The reference: k=2, 6 steps, checkpoints at steps 3 and 6; returns its output dir and its engine."""
    out = tmp_path_factory.mktemp("async") / "full"
    OwnCopyEngine.created.clear()
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, out))
    return out, OwnCopyEngine.created[-1]


def test_k2_schedule_is_exact(uninterrupted):
    out, engine = uninterrupted
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["rollout/staleness"] for r in rows] == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert all(r["rollout/canary_diff"] < 1e-6 for r in rows)        # every sync reached the engine's copy
    # tag each generate call with its step: step s (4 prompts per step, data position 4s) is the only one with the
    # seed of its first group's first sample
    by_step = {s: [g for g in engine.generations if completion_seed(0, s, 4 * s, 0) in g.seeds] for s in range(STEPS)}
    assert all(len(gens) == 1 for gens in by_step.values()) and len(engine.generations) == STEPS
    assert {s: gens[0].version for s, gens in by_step.items()} == {s: max(0, s - K) for s in range(STEPS)}
    assert by_step[0][0].thread == "MainThread"                            # step 0: synchronous
    assert all(by_step[s][0].thread.startswith("rlkit-rollout-") for s in range(1, STEPS))
    assert engine.version == STEPS                                         # synced after every step
    # the checkpoint after step 3 holds the batches of steps 3 and 4 (versions 1 and 2); the last one none
    saved = _saved(out, 3).rollouts
    assert [(r.step, r.version) for r in saved] == [(3, 1), (4, 2)]
    assert all(set(r.batch.token_versions[r.batch.response_mask].tolist()) == {r.version} for r in saved)
    assert _saved(out, 6).rollouts == []


def test_k2_resume_from_checkpoint_equals_uninterrupted(uninterrupted, tiny_model_dir, arith_data, tmp_path):
    full, _ = uninterrupted
    part = tmp_path / "part"
    shutil.copytree(full / "checkpoints" / "step_000003", part / "checkpoints" / "step_000003")
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, part))              # resume=auto from step 3
    assert [r["step"] for r in _rows(part)] == [4, 5, 6]
    assert _comparable(_rows(part)) == _comparable(_rows(full)[3:])         # exactly: loss, rewards, staleness...
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_k2_interrupted_mid_step_resumes_exactly(uninterrupted, tiny_model_dir, arith_data, tmp_path, monkeypatch):
    """Ctrl-C in the 4th step, while step 5's batch is generating: the checkpoint then holds steps 3, 4 and 5."""
    full, _ = uninterrupted
    out, real, calls = tmp_path / "int", rlkit.trainer.policy_update, []

    def interrupt_in_step_3(ctx, batch, step):
        calls.append(step)
        if step == 3:
            raise KeyboardInterrupt
        return real(ctx, batch, step)

    monkeypatch.setattr(rlkit.trainer, "policy_update", interrupt_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, out, save_every=0))
    monkeypatch.setattr(rlkit.trainer, "policy_update", real)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000003"]     # saved by the interrupt
    assert [(r.step, r.version) for r in _saved(out, 3).rollouts] == [(3, 1), (4, 2), (5, 3)]
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, out, save_every=0))       # resume=auto
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]
    assert _comparable(_rows(out)) == _comparable(_rows(full))
    a, b = _weights(full), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_shorter_run_generates_the_missing_batches_now(tiny_model_dir, arith_data, tmp_path):
    """A run that ended at train.steps=3 never generated steps 3 and 4 (their versions 1 and 2 are gone): the
    resumed run generates them from version 3 and logs that staleness (0, 1), then the schedule resumes."""
    out = tmp_path / "short"
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, out, steps=3))
    assert _saved(out, 3).rollouts == []
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, out, steps=5))
    assert [r["rollout/staleness"] for r in _rows(out)] == [0.0, 1.0, 2.0, 0.0, 1.0]


def test_k0_is_the_synchronous_path(tiny_model_dir, arith_data, tmp_path):
    """k=0 on the own-copy engine == today's default run (no option, the hf engine sampling the live policy)."""
    OwnCopyEngine.created.clear()
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, tmp_path / "k0", k=0, steps=3))
    rlkit.trainer.train(_cfg(tiny_model_dir, arith_data, tmp_path / "sync", k=None, engine="hf", steps=3))
    k0, sync = _rows(tmp_path / "k0"), _rows(tmp_path / "sync")
    assert [r.pop("rollout/canary_diff") for r in k0] == [0.0, 0.0, 0.0]    # hf has no copy to check
    assert _comparable(k0) == _comparable(sync)
    assert [r["rollout/staleness"] for r in sync] == [0.0, 0.0, 0.0]
    gens = OwnCopyEngine.created[-1].generations
    assert [(g.version, g.thread) for g in gens] == [(s, "MainThread") for s in range(3)]   # v(s) = s, in-line
    a, b = _weights(tmp_path / "k0"), _weights(tmp_path / "sync")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hf_engine_refuses_async(tiny_model_dir, arith_data, tmp_path):
    from rlkit.trainer import train
    cfg = load_config(None, ["rollout.max_staleness=3"], base=recipe_dict(tiny_model_dir, arith_data, tmp_path))
    with pytest.raises(ValueError, match="max_staleness=3 needs an engine.*samples from the training module"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(600)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")
def test_vllm_async_is_one_step_stale(tiny_model_dir, arith_data, tmp_path):
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=4)
    cfg["rollout"].update(engine="vllm", max_staleness=1)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "train", str(tmp_path / "r.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/staleness" in r]
    assert [r["rollout/staleness"] for r in steps] == [0.0, 1.0, 1.0, 1.0]   # first step synchronous
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)               # every sync verified
    assert all(r["rollout/weight_version"] == r["step"] for r in steps)


def test_a_sampler_reading_the_live_policy_refuses_async(tiny_model_dir, arith_data, tmp_path):
    from rlkit.trainer import train
    cfg = _cfg(tiny_model_dir, arith_data, tmp_path, overrides=["sampler.name=gvm"])
    with pytest.raises(ValueError, match="max_staleness=2 with sampler 'gvm'.*gradient probe.*max_staleness=0"):
        train(cfg)
