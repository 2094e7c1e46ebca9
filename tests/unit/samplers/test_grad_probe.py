"""rlkit.grad_probe: per-sequence gradient norms on a parameter subset equal an independent full backward."""

import pytest

from rlkit.forward import token_logprobs
from rlkit.grad_probe import probe_parameters, sequence_grad_norms
from rlkit.ops import right_pad


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def reference_norm(model, prompt, response, pattern):
    """-sum_t log pi over the response, backward on the whole model, then the norm of the chosen .grad tensors."""
    model.zero_grad()
    ids, mask = right_pad([response], 0)
    logp, _ = token_logprobs(model, [prompt], ids, mask, pad_id=0)
    (-logp.sum()).backward()
    norm = sum(p.grad.pow(2).sum() for _, p in probe_parameters(model, pattern)) ** 0.5
    model.zero_grad()
    return float(norm)


def test_matches_full_backward_and_leaves_grads_alone(model):
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 12, 2], [13]]
    got = sequence_grad_norms(model, prompts, responses, pattern="embed_tokens", pad_id=0)   # [2]
    want = [reference_norm(model, p, r, "embed_tokens") for p, r in zip(prompts, responses)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())      # .grad untouched (optimizer state safe)
    # longer response: more terms in the summed log-prob -> a different, positive norm
    assert got[0] > 0 and got[1] > 0 and got[0] != got[1]
    assert sequence_grad_norms(model, [[5]], [[]], pattern="embed_tokens", pad_id=0).tolist() == [0.0]


def test_frozen_parameters_are_probed_and_refrozen(model):
    emb = [p for _, p in probe_parameters(model, "embed_tokens")]
    for p in emb:
        p.requires_grad_(False)
    try:
        got = sequence_grad_norms(model, [[5, 6]], [[7, 8]], pattern="embed_tokens", pad_id=0)
        assert got.item() > 0 and not any(p.requires_grad for p in emb)
    finally:
        for p in emb:
            p.requires_grad_(True)


def test_unknown_pattern_is_named(model):
    with pytest.raises(ValueError, match="no parameter name contains 'embeddings'"):
        sequence_grad_norms(model, [[5]], [[6]], pattern="embeddings", pad_id=0)
