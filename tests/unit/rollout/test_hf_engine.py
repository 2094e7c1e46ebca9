"""hf rollout engine: seeded sampling is exact and batch-invariant, logprobs match the trainer's forward."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.forward import token_logprobs
from rlkit.rollout import FINISH_LENGTH, SamplingParams, completion_seed
from rlkit.rollout.hf import HFEngine
from rlkit.rollout.seeded_sampling import filter_logits, gumbel_noise


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return HFEngine(model, tok, batch_size=3)


def test_gumbel_max_samples_from_softmax():
    # argmax(logits + g) over 20000 independent seeds must follow softmax(logits) = [0.6652, 0.2447, 0.0900]
    logits = torch.tensor([2.0, 1.0, 0.0])
    seeds = torch.arange(20000)
    picks = (logits[None, :] + gumbel_noise(seeds, 0, 3).float()).argmax(-1)
    freq = torch.bincount(picks, minlength=3).float() / len(seeds)
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.015)
    # noise depends only on (seed, position, vocab index)
    assert torch.equal(gumbel_noise(torch.tensor([7, 9]), 3, 5)[1], gumbel_noise(torch.tensor([9]), 3, 5)[0])
    assert not torch.equal(gumbel_noise(torch.tensor([7]), 3, 5), gumbel_noise(torch.tensor([7]), 4, 5))


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    # top_p=0.7: cumulative 0.5, 0.8 -> keep the first two tokens (the one crossing 0.7 is kept)
    kept = torch.isfinite(filter_logits(logits, 0, 0.7))[0].tolist()
    assert kept == [True, True, False, False]


def test_completion_seed_is_pure():
    assert completion_seed(0, 3, 17, 2) == completion_seed(0, 3, 17, 2)
    assert len({completion_seed(0, 3, g, j) for g in range(50) for j in range(8)}) == 400


def test_batch_composition_invariance(engine, tiny_model_dir):
    tok = engine.tokenizer
    prompts = [tok("12+3=").input_ids, tok("7+8=").input_ids, tok("40-13=").input_ids, tok("1+1=").input_ids]
    seeds = [11, 22, 33, 44]
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    together = engine.generate(prompts, seeds, params)
    alone = [engine.generate([p], [s], params)[0] for p, s in zip(prompts, seeds)]
    for a, b in zip(together, alone):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    again = engine.generate(prompts[::-1], seeds[::-1], params)[::-1]
    assert [c.token_ids for c in again] == [c.token_ids for c in together]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_match_forward(engine, temperature):
    tok = engine.tokenizer
    prompts = [tok("12+3=").input_ids, tok("7+88=").input_ids]
    comps = engine.generate(prompts, [1, 2], SamplingParams(max_new_tokens=6, temperature=temperature))
    T = max(len(c.token_ids) for c in comps)
    ids = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T, dtype=torch.bool)
    for i, c in enumerate(comps):
        ids[i, :len(c.token_ids)], mask[i, :len(c.token_ids)] = torch.tensor(c.token_ids), True
    with torch.no_grad():
        lp, _ = token_logprobs(engine.model, prompts, ids, mask, pad_id=tok.pad_token_id, temperature=temperature)
    for i, c in enumerate(comps):
        assert lp[i, :len(c.token_ids)].tolist() == pytest.approx(c.logprobs, abs=1e-4)
        assert all(x <= 0 and math.isfinite(x) for x in c.logprobs)


def test_greedy_and_finish_reasons(engine):
    tok = engine.tokenizer
    p = tok("5+5=").input_ids
    a = engine.generate([p], [1], SamplingParams(max_new_tokens=4, temperature=0.0))[0]
    b = engine.generate([p], [2], SamplingParams(max_new_tokens=4, temperature=0.0))[0]
    assert a.token_ids == b.token_ids  # greedy ignores the seed
    with torch.no_grad():
        ref = engine.model.generate(torch.tensor([p]), max_new_tokens=4, do_sample=False,
                                    pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
    assert a.token_ids == ref[:len(a.token_ids)]
    assert a.finish_reason == FINISH_LENGTH or a.token_ids[-1] == tok.eos_token_id
    assert len(a.token_ids) <= 4


def test_sharded_policy_generates_in_lock_step(tiny_model_dir, monkeypatch):
    """FSDP2/ZeRO-3 parameters make generation run through generate with synced_gpus (ranks would otherwise
    deadlock when one rank's completions end first); a plain policy decodes with the compacting loop instead."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = HFEngine(model, AutoTokenizer.from_pretrained(tiny_model_dir), batch_size=4)
    seen, generate = [], model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["synced_gpus"])
        return generate(*args, **{**kwargs, "synced_gpus": False})   # one process: nothing to sync with

    monkeypatch.setattr(model, "generate", spy)
    params = SamplingParams(temperature=1.0, max_new_tokens=3)
    engine.generate([[5, 6, 7]], [1], params)
    assert seen == []
    monkeypatch.setattr("rlkit.rollout.hf.is_sharded", lambda m: m is model)
    engine.generate([[5, 6, 7]], [1], params)
    assert seen == [True]


def _long_tailed_engine(tiny_model_dir, stops: int = 60):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = [tok.eos_token_id] + [i for i in range(len(tok))
                                                                 if i not in tok.all_special_ids][:stops]
    return HFEngine(model, tok, batch_size=16)


def test_compacting_decode_samples_what_generate_samples(tiny_model_dir, monkeypatch):
    # many stop tokens: rows end at different steps and leave the batch; every row still gets exactly the tokens
    # and log-probs of transformers' generate with the same seeded sampler (which keeps finished rows)
    engine = _long_tailed_engine(tiny_model_dir)
    tok = engine.tokenizer
    prompts = [tok(f"{a}+{b}=").input_ids for a in range(3, 40, 5) for b in (1, 22)]          # 16, two widths
    seeds = list(range(100, 116))
    params = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95)
    compact = engine.generate(prompts, seeds, params)
    monkeypatch.setattr("rlkit.rollout.hf.is_sharded", lambda m: True)
    monkeypatch.setattr(engine.model, "generate", lambda *a, **k: type(engine.model).generate(
        engine.model, *a, **{**k, "synced_gpus": False}))
    reference = engine.generate(prompts, seeds, params)
    lengths = [len(c.token_ids) for c in compact]
    assert min(lengths) < max(lengths)                       # the case exercises compaction
    for a, b in zip(compact, reference):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_finished_rows_leave_the_batch(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rlkit.rollout.hf_decode.COMPACT_SHARE", 0.0)   # every finished row leaves at once
    engine = _long_tailed_engine(tiny_model_dir)
    model, rows = engine.model, []
    forward = model.forward

    def spy(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    prompts = [engine.tokenizer(f"{a}+7=").input_ids for a in range(10, 26)]
    comps = engine.generate(prompts, list(range(16)), SamplingParams(max_new_tokens=12, temperature=1.0))
    lengths = sorted(len(c.token_ids) for c in comps)
    # forward t (t >= 1) runs the rows that have sampled t tokens without stopping: rows with length > t
    assert rows == [16] + [sum(n > t for n in lengths) for t in range(1, max(lengths))]
