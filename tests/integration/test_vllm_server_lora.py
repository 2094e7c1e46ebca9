"""A LoRA policy on a stock vLLM server started with `rlkit rollout-server --lora-rank 8`: the base weights once,
the adapter at every sync through vLLM's runtime adapter loading (rlkit/rollout/server_lora.py), the requests and
the canary on the adapter; a sync that does not load the adapter fails the canary; a training run."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlkit.config import ModelConfig
from rlkit.forward import token_logprobs
from rlkit.modeling import load_causal_lm, load_tokenizer
from rlkit.rollout.canary import WeightSyncError, check_sync, make_probe
from tests.conftest import recipe_dict
from tests.integration.test_vllm_server import PARAMS, _engine, launch, train_steps

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.multiprocess, pytest.mark.timeout(900),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]

LORA = {"r": 8, "alpha": 16.0}


@pytest.fixture(scope="module")
def lora_server(tiny_model_dir):
    from rlkit.rollout.launcher import stop_all
    addresses, procs, stop = launch(tiny_model_dir, 1, "0,1", "--lora-rank", "8")
    assert procs[0].env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "1" and "--enable-lora" in procs[0].cmd
    yield addresses
    stop.set()
    stop_all(procs)


def _change_adapter(policy, gen) -> None:
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_adapter_sync_serves_the_adapter_and_the_canary_checks_it(lora_server, tiny_model_dir):
    mcfg = ModelConfig(name_or_path=str(tiny_model_dir), lora={**LORA, "sync": "adapter"})
    policy, tok = load_causal_lm(mcfg), load_tokenizer(mcfg)
    with torch.no_grad():                       # the server's --model differs from the trainer's base weights:
        for n, p in policy.named_parameters():  # only the base push at connect makes them equal
            if "base_layer" in n:
                p.add_(0.05)
    eng = _engine(policy, tok, lora_server, lora=mcfg.lora)
    probe = make_probe(tok, tok("12+3=").input_ids)
    gen = torch.Generator().manual_seed(0)
    try:
        assert eng.adapters is not None and eng.last_sync["servers_alive"] == 1
        assert check_sync(eng, policy, probe, pad_id=tok.pad_token_id, tolerance=None, version=0)["canary_diff"] < 1e-3
        for version in (1, 2):
            _change_adapter(policy, gen)
            metrics = eng.sync_weights(policy)
            assert metrics["sync_gb"] < 1e-3 and metrics["sync_buckets"] == 0     # the adapter only: ~150 kB
            assert check_sync(eng, policy, probe, pad_id=tok.pad_token_id, tolerance=None,
                              version=version)["canary_diff"] < 1e-3
            assert eng.fleet.servers[0].client.weight_version() == eng.current
            assert sorted(p.name for p in eng.adapters.dir.iterdir()) == [f"v{version - 1}", f"v{version}"]
        prompts = [tok(f"{i}+{i % 7}=").input_ids for i in range(8)]
        for p, c in zip(prompts, eng.generate(prompts, list(range(8)), PARAMS)):   # sampled with the adapter
            ids = torch.tensor([c.token_ids])
            lp, _ = token_logprobs(policy, [p], ids, torch.ones_like(ids, dtype=torch.bool), pad_id=tok.pad_token_id)
            assert (lp[0] - torch.tensor(c.logprobs)).abs().max().item() < 1e-3
            assert set(c.token_versions) == {2}
        eng.adapters.load = lambda client, version: client.update_weight_version(version)   # never loads it
        _change_adapter(policy, gen)
        eng.sync_weights(policy)
        with pytest.raises(WeightSyncError, match="were not applied"):
            check_sync(eng, policy, probe, pad_id=tok.pad_token_id, tolerance=None, version=3)
    finally:
        eng.close()


def test_lora_training_run_on_the_server_sends_only_adapters(lora_server, tiny_model_dir, arith_data, tmp_path):
    cfg = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run", steps=3, mini_batches=2)   # -> old_logprobs
    cfg["model"]["lora"] = LORA
    cfg["rollout"]["engine"] = {"name": "vllm_server", "addresses": lora_server, "connect_timeout_s": 300,
                                "adapter_dir": str(tmp_path / "adapters")}
    steps = train_steps(cfg, tmp_path)
    assert [r["rollout/weight_version"] for r in steps] == [1.0, 2.0, 3.0]
    assert all(r["rollout/canary_diff"] < 1e-3 and r["rollout/sync_gb"] < 1e-3 for r in steps)
    assert all(r["rollout/logprob_diff"] < 1e-3 for r in steps)        # sampled with the adapter the trainer has
    print("sync_gb per step:", [r["rollout/sync_gb"] for r in steps])
    assert not any((tmp_path / "adapters").iterdir())        # the run's adapter directory is removed at the end
