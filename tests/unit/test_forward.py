"""rlkit.forward: the chunked LM-head path and packed micro-batches give the full-logits, padded-row numbers.

Every comparison is against ``token_logprobs(..., chunk_tokens=0)`` (full [n,S,V] logits, right-padded rows), the
path rlkit used before: values, entropy and gradients w.r.t. every parameter, on the tiny Qwen2 and Llama models.
"""

from __future__ import annotations

import logging

import pytest
import torch

from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.forward import ForwardSpec, micro_batch_groups, resolve_packing, score_batch, token_logprobs

PROMPTS = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14, 15]]
RESPONSES = [[10, 11, 12, 2, 40], [13], [14, 15, 16], [17, 18, 19, 20, 21, 22, 23]]
TEMPERATURE = 0.8


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from rlkit.tiny_model import build_tiny_model
    path = build_tiny_model(tmp_path_factory.mktemp(request.param) / "m", arch=request.param, seed=1)
    return AutoModelForCausalLM.from_pretrained(path)


def _inputs():
    ids, mask = ops.right_pad(RESPONSES, 0)  # [4,7], [4,7]
    mask[0, 1] = False  # a masked token *inside* a response: stays in the context, gets no log-prob
    return ids, mask


def _run(model, **kwargs):
    """logprobs, entropy and every parameter's gradient of Σ w * logprobs (w: fixed random per-token weights)."""
    ids, mask = _inputs()
    model.zero_grad(set_to_none=True)
    lp, ent = token_logprobs(model, PROMPTS, ids, mask, pad_id=0, temperature=TEMPERATURE, with_entropy=True,
                             **kwargs)  # [4,7], [4,7]
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(0))  # [4,7]
    (lp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return lp.detach(), ent, grads


def _assert_same(got, want, atol, grad_rtol):
    (lp, ent, grads), (ref_lp, ref_ent, ref_grads) = got, want
    torch.testing.assert_close(lp, ref_lp, atol=atol, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=atol, rtol=0)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, g in ref_grads.items():  # fp32 rounding: |diff| <= atol relative to the gradient's size
        torch.testing.assert_close(grads[name], g, atol=atol * max(1.0, float(g.abs().max())), rtol=grad_rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("chunk_tokens", ["auto", 3])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_and_packed_match_full_logits_fp32(model, chunk_tokens, packed):
    # 4 rows, 15 response positions, 14 unmasked: chunk_tokens=3 -> 5 chunks (3,3,3,3,2)
    ref = _run(model, chunk_tokens=0)
    got = _run(model, chunk_tokens=chunk_tokens, packed=packed)
    _assert_same(got, ref, atol=1e-5, grad_rtol=1e-4)
    _, mask = _inputs()
    assert (got[0][~mask] == 0).all() and (got[1][~mask] == 0).all() and not got[1].requires_grad


def test_packed_full_logits_match_padded(model):
    _assert_same(_run(model, chunk_tokens=0, packed=True), _run(model, chunk_tokens=0), atol=1e-5, grad_rtol=1e-4)


def test_chunked_under_bf16_autocast(model):
    # fp32 master weights, bf16 matmuls: both paths round the same bf16 logits; fp32 log-softmax in both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _run(model, chunk_tokens=0)
        got = _run(model, chunk_tokens=3, packed=True)
    assert got[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in got[2].values())
    torch.testing.assert_close(got[0], ref[0], atol=5e-2, rtol=0)  # bf16 hidden states: ~1e-2 differences
    torch.testing.assert_close(got[1], ref[1], atol=5e-2, rtol=0)
    for name, g in ref[2].items():
        assert (got[2][name] - g).norm() <= 5e-2 * g.norm() + 1e-6, name


def test_frozen_head_precomputes_hidden_grad(model):
    # tied embeddings frozen (as under LoRA): the chunked path computes d logprob / d hidden in forward instead
    # of recomputing the logits in backward; every other gradient is unchanged
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(False)
    try:
        ref = _run(model, chunk_tokens=0)
        got = _run(model, chunk_tokens=4)
    finally:
        emb.requires_grad_(True)
    assert "model.embed_tokens.weight" not in got[2]
    _assert_same(got, ref, atol=1e-5, grad_rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(model):
    model.train()
    try:
        ref = _run(model, chunk_tokens=3)
        model.gradient_checkpointing_enable()
        got = _run(model, chunk_tokens=3)
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    _assert_same(got, ref, atol=1e-6, grad_rtol=1e-5)


def test_unfusable_model_falls_back_to_full_logits(model, monkeypatch, caplog):
    ref = _run(model, chunk_tokens=0)
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)  # refused by check_fusable
    with caplog.at_level(logging.INFO, logger="rlkit"):
        got = _run(model, chunk_tokens=3)
        _run(model, chunk_tokens=3)
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "using full logits" in r.message)) == 1  # logged once
    _assert_same(got, ref, atol=0, grad_rtol=0)  # the very same computation


def test_lora_model_and_adapter_disabled_reference(model):
    peft = pytest.importorskip("peft")
    from rlkit.lora import AdapterDisabledReference
    ids, mask = _inputs()
    base = token_logprobs(model, PROMPTS, ids, mask, pad_id=0, chunk_tokens=0)[0].detach()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      init_lora_weights=False))
    try:
        ref = _run(lora, chunk_tokens=0)
        got = _run(lora, chunk_tokens=3, packed=True)
        assert got[2] and all("lora_" in n for n in got[2])  # only adapters train; the tied head is frozen
        _assert_same(got, ref, atol=1e-5, grad_rtol=1e-4)
        with torch.no_grad():
            ref_lp = token_logprobs(AdapterDisabledReference(lora), PROMPTS, ids, mask, pad_id=0, chunk_tokens=3)[0]
        torch.testing.assert_close(ref_lp, base, atol=1e-5, rtol=0)
        assert not torch.allclose(ref_lp, got[0], atol=1e-3)  # the adapter does change the policy
    finally:
        lora.unload()
        model.requires_grad_(True)  # get_peft_model froze the base weights of the shared fixture


# ---------------------------------------------------------------------------------------- micro-batches


def test_build_packed_inputs_hand_checked():
    # rows: prompt [5,6] + response [7,8] (L=2 of T=3), prompt [9] + response [10,11,12] (L=3)
    ids, mask = ops.right_pad([[7, 8], [10, 11, 12]], 0)
    input_ids, position_ids, flat_index = ops.build_packed_inputs([[5, 6], [9]], ids, mask)
    assert input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    # row 0: token t predicted at 0 + 2 - 1 + t = 1, 2, (3 -> clamped to its last token 3); row 1: 4 + 0 + t
    assert flat_index.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert ops.sequence_lengths([[5, 6], [9]], mask).tolist() == [4, 4]


def test_token_budget_groups_hand_checked():
    lengths = torch.tensor([5, 9, 2, 7, 3, 12])
    # packed, budget 12, first-fit decreasing: 12 | 9+3 | 7+5 | 2 ... 7: bin3 (room 5) gets 5 -> room 0; 2 -> new
    groups = ops.token_budget_groups(lengths, 12, packed=True)
    assert [g.tolist() for g in groups] == [[5], [1, 4], [0, 3], [2]]
    # padded, budget 14: sorted 12 | 9,7 (2*9=18 > 14 -> no) ... -> [12], [9], [7, 5] (2*7=14), [3, 2] (2*3)
    groups = ops.token_budget_groups(lengths, 14, packed=False)
    assert [g.tolist() for g in groups] == [[5], [1], [0, 3], [2, 4]]
    # a row above the budget goes alone; every row exactly once
    groups = ops.token_budget_groups(lengths, 4, packed=True)
    assert sorted(torch.cat(groups).tolist()) == list(range(6)) and [5] in [g.tolist() for g in groups]
    with pytest.raises(ValueError, match="max_tokens must be >= 1, got 0"):
        ops.token_budget_groups(lengths, 0)


def test_resolve_packing(model, monkeypatch):
    assert model.config._attn_implementation == "sdpa" and not resolve_packing("auto", model)  # dense [L, L]
    assert resolve_packing(True, model) and not resolve_packing(False, model)
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    assert resolve_packing("auto", model)


def _batch(n=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n,), generator=gen).tolist()
    ids, mask = ops.right_pad([torch.randint(5, 300, (k,), generator=gen).tolist() for k in lengths], 0)
    zeros = torch.zeros(n)
    return RolloutBatch(prompt_ids=[[5 + i, 6] for i in range(n)], response_ids=ids, response_mask=mask,
                        rollout_logprobs=torch.zeros(ids.shape), truncated=zeros.bool(),
                        group_ids=torch.arange(n) // 3, rewards=zeros, success=zeros,
                        reward_components=zeros[:, None])


def test_auto_token_budget_is_the_default_and_never_wider_than_fixed_micro_batches():
    from rlkit.config import TrainConfig
    assert TrainConfig().max_tokens_per_micro == "auto"
    # prompts of 2 tokens; response lengths 10, 1, 1, 1, 1, 1, 1, 1 -> model lengths 12, 3 x 7
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[0] = True
    mask[1:, 0] = True
    batch = RolloutBatch(prompt_ids=[[5, 6]] * 8, response_ids=torch.ones(8, 10, dtype=torch.long),
                         response_mask=mask, rollout_logprobs=torch.zeros(8, 10), truncated=torch.zeros(8).bool(),
                         group_ids=torch.zeros(8, dtype=torch.long), rewards=torch.zeros(8), success=torch.zeros(8),
                         reward_components=torch.zeros(8, 1))
    # fixed rows of 2: 4 micro-batches, the first 2 x 12 = 24 tokens wide. auto = 2 x 12 = 24 tokens: padded, the
    # long row goes with one short one (2 x 12 = 24) and the six short rows share one (6 x 3 = 18 <= 24)
    assert [g.tolist() for g in micro_batch_groups(batch, 2, None)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [g.tolist() for g in micro_batch_groups(batch, 2, "auto", packed=False)] == [[0, 1], [2, 3, 4, 5, 6, 7]]
    # packed (one padding-free row of <= 24 tokens): 12 + 3 x 4 = 24, then the last three short rows (9)
    assert [g.tolist() for g in micro_batch_groups(batch, 2, "auto", packed=True)] == [[0, 1, 2, 3, 4],
                                                                                        [5, 6, 7]]


def test_score_batch_token_budget_keeps_row_order(model, caplog, monkeypatch):
    import contextlib

    import rlkit.forward
    monkeypatch.setattr(rlkit.forward, "_logged", set())  # "warn once" is per process; start afresh
    batch = _batch()
    common = dict(pad_id=0, micro_batch_size=4, temperature=TEMPERATURE, autocast=contextlib.nullcontext)
    ref_lp, ref_ent = score_batch(model, batch, ForwardSpec(chunk_tokens=0, **common), with_entropy=True)
    assert len(micro_batch_groups(batch, 4, 20)) > 2  # several budgeted micro-batches, not in row order
    with caplog.at_level(logging.WARNING, logger="rlkit"):
        for packed in (True, False):
            spec = ForwardSpec(max_tokens_per_micro=20, pack_sequences=packed, **common)
            lp, ent = score_batch(model, batch, spec, with_entropy=True)
            torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
            torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
        spec = ForwardSpec(max_tokens_per_micro=5, pack_sequences=True, **common)   # every row above the budget
        lp, _ = score_batch(model, batch, spec, with_entropy=True)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    assert sum("below the longest sequence" in r.message for r in caplog.records) == 1


def test_bf16_autocast_keeps_fp32_master_weights_and_adam_state(model):
    # model.dtype float32 + train.mixed_precision=bf16: the forward's Linear layers compute in bf16, while the
    # parameters, their gradients and AdamW's moments stay fp32; two steps train (finite loss, weights move)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prepared, opt = acc.prepare(model, opt)
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ids, mask = _inputs()
    try:
        for _ in range(2):
            with acc.autocast():
                lp, _ = token_logprobs(prepared, PROMPTS, ids, mask, pad_id=0, chunk_tokens=3)  # [4,7]
            loss = -(lp * mask).sum() / mask.sum()
            assert torch.isfinite(loss) and lp.dtype == torch.float32
            acc.backward(loss)
            assert all(p.grad.dtype == torch.float32 for p in model.parameters())
            opt.step()
            opt.zero_grad(set_to_none=True)
        moved = sum(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    finally:
        hook.remove()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
        AcceleratorState._reset_state(reset_partial_state=False)
    assert seen == [torch.bfloat16, torch.bfloat16] and moved == len(before)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = list(opt.state.values()) if hasattr(opt, "state") else list(opt.optimizer.state.values())
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in states)
