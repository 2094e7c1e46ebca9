"""Real vLLM (the CPU build here) on the tiny model: generation, logprob agreement, weight sync + canary."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.forward import token_logprobs
from rlkit.rollout import SamplingParams
from rlkit.rollout.canary import WeightSyncError, check_sync, make_probe

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(600),
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")]


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    from rlkit.rollout.vllm_engine import VLLMEngine
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = VLLMEngine(model, tok, model_path=str(tiny_model_dir), max_model_len=128, sync_bucket_mb=1.0)
    yield engine, model, tok
    engine.close()


def _logprobs(model, tok, prompts, comps):
    T = max(len(c.token_ids) for c in comps)
    ids = torch.zeros(len(comps), T, dtype=torch.long)
    mask = torch.zeros(len(comps), T, dtype=torch.bool)
    for i, c in enumerate(comps):
        ids[i, :len(c.token_ids)], mask[i, :len(c.token_ids)] = torch.tensor(c.token_ids), True
    with torch.no_grad():
        lp, _ = token_logprobs(model, prompts, ids, mask, pad_id=tok.pad_token_id)
    return lp, mask


def test_generation_and_logprobs_match_trainer(setup):
    engine, model, tok = setup
    prompts = [tok(p).input_ids for p in ("12+3=", "7+88=", "40-13=", "1+1=")] * 4
    comps = engine.generate(prompts, list(range(16)), SamplingParams(max_new_tokens=8, temperature=1.0))
    assert len(comps) == 16 and all(1 <= len(c.token_ids) <= 8 for c in comps)
    assert len({tuple(c.token_ids) for c in comps}) > 1          # different seeds, different samples
    again = engine.generate(prompts[:2], [0, 1], SamplingParams(max_new_tokens=8, temperature=1.0))
    assert [c.token_ids for c in again] == [c.token_ids for c in comps[:2]]   # seeded: reproducible
    lp, mask = _logprobs(model, tok, prompts, comps)
    engine_lp = torch.zeros_like(lp)
    for i, c in enumerate(comps):
        engine_lp[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    diff = (lp - engine_lp).abs()[mask].mean().item()
    assert diff < 1e-3, f"vLLM vs trainer mean |logprob diff| {diff}"


def test_sync_round_trip_and_canary(setup):
    engine, model, tok = setup
    probe = make_probe(tok, tok("12+3=").input_ids)
    prompts = [tok(p).input_ids for p in ("5+5=", "31+4=", "9-2=", "70+70=")]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = [c.token_ids for c in engine.generate(prompts, [0] * 4, greedy)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():                  # a large, random change of every weight
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    metrics = engine.sync_weights(model)
    assert metrics["weight_version"] >= 1 and metrics["sync_buckets"] > 1      # 1 MB buckets, ~4 MB model
    after = [c.token_ids for c in engine.generate(prompts, [0] * 4, greedy)]
    assert after != before
    for p, ids in zip(prompts, after):     # the engine now decodes exactly like the trainer's model
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert ids == ref[:len(ids)]
    out = check_sync(engine, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=1)
    assert out["canary_diff"] < 1e-3


def test_canary_fails_when_sync_is_skipped(setup):
    engine, model, tok = setup
    probe = make_probe(tok, tok("12+3=").input_ids)
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)   # the trainer's weights change ...
        model.model.embed_tokens.weight.mul_(-1.0)
    # ... but no sync_weights call: the engine still holds the previous weights
    with pytest.raises(WeightSyncError, match="were not applied"):
        check_sync(engine, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=2)
    engine.sync_weights(model)
    assert check_sync(engine, model, probe, pad_id=tok.pad_token_id, tolerance=None, version=2)["canary_diff"] < 1e-3
