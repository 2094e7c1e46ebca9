"""LoRA end to end: the quickstart recipe improves held-out accuracy with adapters only, checkpoints resume the
adapter, the KL reference is the adapter-disabled base, vLLM receives the adapter (or merged weights) and the
canary catches an adapter that was never pushed, and two DDP processes end with identical adapters."""

import importlib.util
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
from tests.integration.conftest import ROOT, rlkit, train_recipe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
needs_vllm = [pytest.mark.vllm, pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                   reason="vllm not installed")]
LORA = {"r": 8, "alpha": 16.0}


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _run(cmd: list[str], timeout: int = 600, env: dict | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def _lora_keys(state: dict) -> dict:
    """Checkpoint/peft-model keys (``...lora_A.default.weight``) -> peft file keys (``...lora_A.weight``)."""
    return {k.replace(".default.weight", ".weight"): v for k, v in state.items() if ".lora_" in k}


def test_lora_recipe_improves_heldout_accuracy(warm_start, tmp_path):
    out = tmp_path / "run"
    _, acc = train_recipe("lora_quickstart", warm_start, out)
    assert acc[-1] - acc[0] >= 0.15, f"LoRA: held-out accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    final = {p.name for p in (out / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= final
    assert "model.safetensors" not in final                                        # an adapter, not a model
    adapter = load_file(str(out / "final/adapter_model.safetensors"))
    ckpt = _lora_keys(load_file(str(out / "checkpoints/step_000040/model.safetensors")))
    assert ckpt.keys() == adapter.keys() and all(torch.equal(ckpt[k], adapter[k]) for k in adapter)
    rlkit("export", str(out))
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(warm_start / "sft")
    moved = [k for k, v in base.state_dict().items() if not torch.equal(v, merged.state_dict()[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved)                # only LoRA-targeted Linears


def test_resume_restores_adapter_and_kl_reference_is_base(tiny_model_dir, arith_data, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from peft import get_peft_model_state_dict

    from rlkit.config import load_config
    from rlkit.lora import AdapterDisabledReference
    from rlkit.trainer import _restore, build_session, train
    out = tmp_path / "run"
    tree = recipe_dict(tiny_model_dir, arith_data, out, steps=2)
    tree["model"]["lora"] = LORA
    tree["losses"] = [{"name": "ppo_clip"}, {"name": "kl", "beta": 0.1}]
    cfg = load_config(None, base=tree)
    train(cfg)
    steps = [r for r in _rows(out) if "loss/total" in r]
    # step 1: B = 0, so the policy equals the base (the reference) exactly and k3 KL is exactly 0
    assert steps[0]["loss/kl"] == 0.0 and steps[1]["loss/kl"] > 0
    saved = load_file(str(out / "final/adapter_model.safetensors"))
    AcceleratorState._reset_state(reset_partial_state=False)
    s = build_session(load_config(None, ["train.steps=3"], base=tree), Accelerator())
    assert isinstance(s.ref_model, AdapterDisabledReference)                       # no second model loaded
    fresh = get_peft_model_state_dict(s.policy)
    assert not all(torch.equal(fresh[k], saved[k]) for k in saved)
    step, _ = _restore(s, out / "checkpoints/step_000002")
    resumed = get_peft_model_state_dict(s.policy)
    assert step == 2 and resumed.keys() == saved.keys()
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)                 # the adapter, exactly


def _train_vllm(tiny_model_dir, arith_data, out: Path, sync: str) -> tuple[list[dict], str]:
    tree = recipe_dict(tiny_model_dir, arith_data, out, steps=3)
    tree["model"]["lora"] = {**LORA, "sync": sync}
    tree["rollout"].update(engine={"name": "vllm", "max_model_len": 128, "kv_cache_gib": 1})
    (out.parent / f"{sync}.yaml").write_text(yaml.safe_dump(tree))
    log = _run([sys.executable, "-m", "rlkit.cli", "train", str(out.parent / f"{sync}.yaml")])
    assert "Traceback" not in log, log[-6000:]    # the engine shut down cleanly (VLLMEngine.close)
    return [r for r in _rows(out) if "loss/total" in r], log


@pytest.mark.parametrize("sync", ["adapter", "merged"])
@needs_vllm[0]
@needs_vllm[1]
def test_vllm_lora_sync_passes_canary(sync, tiny_model_dir, arith_data, tmp_path):
    steps, log = _train_vllm(tiny_model_dir, arith_data, tmp_path / "run", sync)
    assert [r["rollout/weight_version"] for r in steps] == [1.0, 2.0, 3.0]
    assert all(r["rollout/canary_diff"] < 1e-3 for r in steps)                  # every sync verified
    if sync == "adapter":   # only the adapter travels: 4 layers x 7 Linears x r=8 x (in + out) floats, < 1 MB
        assert "model.lora.sync=adapter -> adapter" in log
        assert all(r["rollout/sync_gb"] < 1e-3 for r in steps)
    else:                   # the full merged model: ~1.2 M float32 parameters (+ the tied head again)
        assert "-> adapter" not in log
        assert all(r["rollout/sync_gb"] > 4e-3 for r in steps)


def skipped_push_fails_canary(model_dir: str) -> None:
    """Runs in its own process (one vLLM engine per process): the canary passes after every real adapter push and
    fails when a sync silently skips the push."""
    from rlkit.config import ModelConfig
    from rlkit.modeling import load_causal_lm, load_tokenizer
    from rlkit.rollout.canary import WeightSyncError, check_sync, make_probe
    from rlkit.rollout.vllm_engine import VLLMEngine
    mcfg = ModelConfig(name_or_path=model_dir, lora={**LORA, "sync": "adapter"})
    policy, tok = load_causal_lm(mcfg), load_tokenizer(mcfg)
    engine = VLLMEngine(policy, tok, model_path=model_dir, max_model_len=128, lora=mcfg.lora)
    probe = make_probe(tok, tok("12+3=").input_ids)
    gen = torch.Generator().manual_seed(0)

    def change_adapter():
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if ".lora_B." in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def canary(version):
        return check_sync(engine, policy, probe, pad_id=tok.pad_token_id, tolerance=None, version=version)

    assert canary(0)["canary_diff"] < 1e-3                 # B = 0: the adapter is a no-op, the engine has the base
    for version in (1, 2):
        change_adapter()
        engine.sync_weights(policy)
        assert canary(version)["canary_diff"] < 1e-3
        assert engine.llm.llm_engine.list_loras() == {version}                    # the previous one was removed
        assert [p.name for p in engine.adapter.dir.iterdir()] == [f"v{version}"]
    engine.adapter.push = lambda llm, model, version: 0   # the failure mode: a sync that never pushes the adapter
    change_adapter()
    engine.sync_weights(policy)
    try:
        canary(3)
    except WeightSyncError as exc:
        print("CANARY FAILED AS EXPECTED:", str(exc)[:80])
    else:
        raise AssertionError("the canary passed although the adapter was never pushed")
    engine.close()


@needs_vllm[0]
@needs_vllm[1]
def test_canary_fails_when_adapter_is_not_pushed(tiny_model_dir):
    code = f"from tests.integration.test_lora import skipped_push_fails_canary as f; f({str(tiny_model_dir)!r})"
    assert "CANARY FAILED AS EXPECTED: sync canary failed after weight sync #3" in _run([sys.executable, "-c", code])


DDP_SCRIPT = """
import sys
from accelerate import Accelerator
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from rlkit.config import load_config
from rlkit.dist import close_process_group
from rlkit.trainer import _run, build_session
cfg = load_config(sys.argv[1])
acc = Accelerator()
assert acc.num_processes == 2, acc.num_processes
s = build_session(cfg, acc)
_run(s)
save_file(get_peft_model_state_dict(s.policy), f"{cfg.train.output_dir}/adapter_rank{acc.process_index}.safetensors")
close_process_group()
"""


@pytest.mark.multiprocess
def test_ddp_lora_ranks_end_with_identical_adapters(tiny_model_dir, arith_data, tmp_path):
    out = tmp_path / "run"
    tree = recipe_dict(tiny_model_dir, arith_data, out, steps=2, prompts_per_step=4, micro_batch_size=3,
                       mini_batches=2)
    tree["model"]["lora"] = LORA
    tree["losses"] = [{"name": "ppo_clip"}, {"name": "kl", "beta": 0.1}]   # the reference path under DDP too
    tree["aggregation"] = "seq_mean_token_sum"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tree))
    (tmp_path / "ddp_lora.py").write_text(DDP_SCRIPT)
    # torchrun, not `accelerate launch --cpu --num_processes 2`: accelerate 1.15 starts ONE process for that
    # (its simple launcher only spreads CPU processes through mpirun); ACCELERATE_USE_CPU=1 -> gloo
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
          str(tmp_path / "ddp_lora.py"), str(tmp_path / "r.yaml")], env={"ACCELERATE_USE_CPU": "1"})
    r0, r1 = (load_file(str(out / f"adapter_rank{i}.safetensors")) for i in (0, 1))
    final = load_file(str(out / "final/adapter_model.safetensors"))
    assert r0.keys() == r1.keys() == final.keys() and len(r0) == 4 * 7 * 2
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(r0[k], final[k]) for k in r0)
    assert any(r0[k].abs().max() > 0 for k in r0 if "lora_B" in k)               # the adapters trained
    steps = [r for r in _rows(out) if "loss/total" in r]
    assert len(steps) == 2 and steps[1]["loss/kl"] > 0
