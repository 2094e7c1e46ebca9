"""rlkit.fused_logprob: chunked LM-head log-probs equal full logits -> log_softmax -> gather, values and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlkit import ops
from rlkit.forward import token_logprobs
from rlkit.fused_logprob import check_fusable, linear_logprobs, model_logprobs_chunked


def _naive(hidden, weight, targets, bias=None, temperature=1.0):
    """Full [R,V] logits -> log_softmax -> gather, plus the entropy: the reference."""
    logp = torch.log_softmax(F.linear(hidden, weight, bias).double() / temperature, -1)  # [R,V]
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)  # [R], [R]


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def test_hand_checked_tiny_case():
    # H=1, V=2: hidden [[2]], weight [[1], [-1]] -> logits z = [2, -2], target 0.
    # lse = log(e^2 + e^-2) = 2.0181499279; logprob = 2 - lse = -0.0181499279
    # p = [0.9820137900, 0.0179862100]; entropy = -Σ p log p = 0.0900947678
    # d logprob / dz = onehot - p = [0.0179862100, -0.0179862100]
    # grad_hidden = (onehot - p) @ W = 0.01798621 * 1 + (-0.01798621) * (-1) = 0.0359724199
    # grad_weight = (onehot - p).T @ hidden = [[0.0359724199], [-0.0359724199]]; grad_bias = onehot - p
    hidden = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[1.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    logprobs, entropy = linear_logprobs(hidden, weight, torch.tensor([0]), bias=bias, with_entropy=True)
    assert logprobs.item() == pytest.approx(-0.0181499279, abs=1e-10)
    assert entropy.item() == pytest.approx(0.0900947678, abs=1e-10)
    logprobs.sum().backward()
    assert hidden.grad.item() == pytest.approx(0.0359724199, abs=1e-10)
    assert weight.grad.flatten().tolist() == pytest.approx([0.0359724199, -0.0359724199], abs=1e-10)
    assert bias.grad.tolist() == pytest.approx([0.0179862100, -0.0179862100], abs=1e-10)


@pytest.mark.parametrize("rows, hidden_size, vocab, chunk_rows, temperature, with_bias", [
    (7, 5, 11, 3, 0.7, True),       # 3 does not divide 7: chunks of 3, 3, 1
    (10, 4, 13, None, 1.3, False),  # auto chunk (one chunk here)
    (5, 3, 9, 1, 1.0, True),        # one row per chunk
    (6, 8, 17, 100, 2.5, False),    # chunk larger than R
])
def test_matches_naive_fp64_values_and_grads(rows, hidden_size, vocab, chunk_rows, temperature, with_bias):
    torch.manual_seed(rows)
    hidden = torch.randn(rows, hidden_size, dtype=torch.float64) * 2
    weight = torch.randn(vocab, hidden_size, dtype=torch.float64)
    bias = torch.randn(vocab, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, vocab, (rows,))
    upstream = torch.randn(rows, dtype=torch.float64)  # arbitrary per-token loss weights

    h, w, b = _leaves(hidden, weight, bias)
    logprobs, entropy = linear_logprobs(h, w, targets, bias=b, temperature=temperature, chunk_rows=chunk_rows,
                                        with_entropy=True)
    (logprobs * upstream).sum().backward()
    rh, rw, rb = _leaves(hidden, weight, bias)
    ref_lp, ref_h = _naive(rh, rw, targets, rb, temperature)
    (ref_lp * upstream).sum().backward()

    assert logprobs.dtype == torch.float64 and logprobs.shape == (rows,) and not entropy.requires_grad
    torch.testing.assert_close(logprobs, ref_lp)
    torch.testing.assert_close(entropy, ref_h.detach())
    torch.testing.assert_close(h.grad, rh.grad)
    torch.testing.assert_close(w.grad, rw.grad)
    if with_bias:
        torch.testing.assert_close(b.grad, rb.grad)


def test_gradcheck_and_partial_grads():
    torch.manual_seed(3)
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,))
    fn = lambda h, w, b: linear_logprobs(h, w, targets, bias=b, temperature=0.6, chunk_rows=2)[0]
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))
    # frozen head (e.g. frozen tied embeddings): only hidden gets a gradient
    frozen = weight.detach()
    logprobs, entropy = linear_logprobs(hidden, frozen, targets, chunk_rows=2)
    logprobs.sum().backward()
    assert entropy is None and frozen.grad is None and hidden.grad.shape == hidden.shape
    with torch.no_grad():
        assert not linear_logprobs(hidden, weight, targets)[0].requires_grad


def test_zero_rows():
    hidden = torch.zeros(0, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    logprobs, entropy = linear_logprobs(hidden, weight, torch.zeros(0, dtype=torch.long), with_entropy=True)
    assert logprobs.shape == (0,) and entropy.shape == (0,)
    logprobs.sum().backward()
    assert weight.grad.abs().sum() == 0 and hidden.grad.shape == (0, 4)


def test_bf16_matches_full_logits_path():
    torch.manual_seed(4)
    hidden = (torch.randn(9, 16) * 2).to(torch.bfloat16)
    weight = (torch.randn(40, 16) * 0.5).to(torch.bfloat16)
    bias = torch.randn(40).to(torch.bfloat16)
    targets = torch.randint(0, 40, (9,))
    h, w, b = _leaves(hidden, weight, bias)
    logprobs, entropy = linear_logprobs(h, w, targets, bias=b, temperature=0.9, chunk_rows=4, with_entropy=True)
    logprobs.sum().backward()
    # the existing path: bf16 logits from F.linear, fp32 log-softmax in ops.logprobs_from_logits
    rh, rw, rb = _leaves(hidden, weight, bias)
    ref_lp, ref_h = ops.logprobs_from_logits(F.linear(rh, rw, rb)[None], targets[None], temperature=0.9,
                                             with_entropy=True)
    ref_lp.sum().backward()
    assert logprobs.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == b.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logprobs, ref_lp[0], atol=1e-5, rtol=0)  # same bf16 logits, same fp32 math
    torch.testing.assert_close(entropy, ref_h[0], atol=1e-5, rtol=0)
    # and loosely against exact fp64 math on the bf16 inputs
    xh, xw, xb = _leaves(hidden.double(), weight.double(), bias.double())
    exact, _ = _naive(xh, xw, targets, xb, 0.9)
    exact.sum().backward()
    torch.testing.assert_close(logprobs.double(), exact.detach(), atol=0.1, rtol=0)
    # grads: bf16 matmuls on both sides, summed in a different order -> bf16-level error (~1 % of the norm),
    # the same size as the existing bf16 path's own error against fp64
    for got, want, exact_grad in [(h.grad, rh.grad, xh.grad), (w.grad, rw.grad, xw.grad), (b.grad, rb.grad, xb.grad)]:
        assert (got.double() - want.double()).norm() <= 2e-2 * want.double().norm()
        assert (got.double() - exact_grad).norm() <= 3e-2 * exact_grad.norm()


def test_cpu_autocast_casts_like_linear():
    torch.manual_seed(5)
    hidden, weight = torch.randn(6, 8), torch.randn(30, 8, requires_grad=True)
    targets = torch.randint(0, 30, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, _ = linear_logprobs(hidden, weight, targets, chunk_rows=4)
        ref, _ = ops.logprobs_from_logits(F.linear(hidden, weight)[None], targets[None])
    torch.testing.assert_close(logprobs, ref[0], atol=1e-5, rtol=0)
    logprobs.sum().backward()
    assert weight.grad.dtype == torch.float32  # the fp32 master weight gets an fp32 grad through the cast


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"chunk_rows": 0}, "chunk_rows must be >= 1 or None, got 0"),
    ({"bias": torch.zeros(4)}, r"bias must be \[V\] = \[5\], got \(4,\)"),
    ({"targets": torch.zeros(3, dtype=torch.int32)}, "targets must be torch.long, got torch.int32"),
    ({"targets": torch.zeros(2, dtype=torch.long)}, r"targets must be \[R\] = \[3\], got \(2,\)"),
    ({"weight": torch.zeros(5, 3)}, r"hidden size mismatch: hidden \(3, 2\) vs weight \(5, 3\)"),
    ({"weight": torch.zeros(5, 2, dtype=torch.float64)}, "weight must match hidden's dtype"),
    ({"hidden": torch.zeros(1, 3, 2)}, r"hidden must be \[R, H\] and weight \[V, H\], got hidden \(1, 3, 2\)"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"hidden": torch.zeros(3, 2), "weight": torch.zeros(5, 2), "targets": torch.zeros(3, dtype=torch.long)}
    args.update(kwargs)
    hidden, weight, targets = args.pop("hidden"), args.pop("weight"), args.pop("targets")
    with pytest.raises(ValueError, match=message):
        linear_logprobs(hidden, weight, targets, **args)


# ------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def _param_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_model_logprobs_chunked_matches_token_logprobs(model):
    prompts = [[5, 6, 7], [8, 9], [10]]
    ids, mask = ops.right_pad([[10, 11, 12, 2], [13], [14, 15]], 0)  # [3,4], [3,4]
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))  # [3,4] per-token loss weights

    model.zero_grad()
    ref_lp, ref_h = token_logprobs(model, prompts, ids, mask, pad_id=0, temperature=0.8, with_entropy=True)
    (ref_lp * weights).sum().backward()
    want = _param_grads(model)

    model.zero_grad()
    input_ids, attention_mask, response_index = ops.build_inputs(prompts, ids, mask, pad_id=0)
    lp, ent = model_logprobs_chunked(model, input_ids, attention_mask, response_index, ids, temperature=0.8,
                                     with_entropy=True, chunk_rows=5)  # 12 positions: chunks of 5, 5, 2
    ((lp * mask) * weights).sum().backward()
    got = _param_grads(model)
    model.zero_grad()

    torch.testing.assert_close(lp * mask, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent * mask, ref_h, atol=1e-5, rtol=1e-5)
    assert not ent.requires_grad and lp.shape == ent.shape == (3, 4)
    assert got.keys() == want.keys() and "model.embed_tokens.weight" in got  # tied head: one shared parameter
    for name in want:  # fp32 rounding only: |diff| ~ 1e-6 on gradients of size ~1
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], atol=1e-5 * scale, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_unsupported_heads_are_named(model, monkeypatch):
    check_fusable(model)  # plain qwen2: fine
    monkeypatch.setattr(model.config, "final_logit_softcapping", 30.0, raising=False)
    with pytest.raises(NotImplementedError, match="config.final_logit_softcapping = 30.0"):
        model_logprobs_chunked(model, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long),
                               torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
                               temperature=1.0, with_entropy=False)
    monkeypatch.undo()
    monkeypatch.setattr(model.config, "logits_scaling", 8.0, raising=False)
    with pytest.raises(NotImplementedError, match="config.logits_scaling = 8.0"):
        check_fusable(model)
    monkeypatch.undo()
    monkeypatch.setattr(model, "get_output_embeddings", lambda: torch.nn.Identity())
    with pytest.raises(NotImplementedError, match="get_output_embeddings\\(\\) is Identity, not a torch.nn.Linear"):
        check_fusable(model)
