"""The entropy with gradient (for the entropy bonus): the chunked LM head and the full-logits path give autograd's
gradient of the plain formula, in every head mode; the entropy loss trains through the real forward."""

from __future__ import annotations

import pytest
import torch

from rlkit.fused_logprob import linear_logprobs
from rlkit.ops import logprobs_from_logits
from rlkit.plugin_api import MicroBatch
from rlkit.registry import LOSSES


def _reference(h, W, b, y, T):
    logp = ((h @ W.T + b) / T).log_softmax(-1)                                             # [R, V]
    return logp.gather(-1, y[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)          # [R], [R]


@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained head", "frozen head (precomputed)"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_entropy_gradient_matches_autograd(frozen_head, temperature):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(17, 8, generator=g, dtype=torch.float64).requires_grad_(not frozen_head)
    b = torch.randn(17, generator=g, dtype=torch.float64).requires_grad_(not frozen_head)
    y = torch.randint(0, 17, (13,), generator=g)
    g_lp, g_ent = torch.randn(13, generator=g, dtype=torch.float64), torch.randn(13, generator=g, dtype=torch.float64)
    lp, ent = linear_logprobs(h, W, y, bias=b, temperature=temperature, chunk_rows=5, with_entropy=True,
                              entropy_grad=True)
    lp_ref, ent_ref = _reference(h, W, b, y, temperature)
    torch.testing.assert_close((lp, ent), (lp_ref, ent_ref))
    inputs = [h] if frozen_head else [h, W, b]
    ours = torch.autograd.grad((lp * g_lp + ent * g_ent).sum(), inputs)
    ref = torch.autograd.grad((lp_ref * g_lp + ent_ref * g_ent).sum(), inputs)
    torch.testing.assert_close(ours, ref)
    # without entropy_grad the entropy is a detached metric, as before
    _, ent = linear_logprobs(h, W, y, bias=b, temperature=temperature, chunk_rows=5, with_entropy=True)
    assert not ent.requires_grad


def test_full_logits_entropy_gradient_matches_autograd():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 11, (2, 5), generator=g)
    lp, ent = logprobs_from_logits(logits, y, temperature=0.8, with_entropy=True, chunk_rows=3, entropy_grad=True)
    logp = (logits / 0.8).log_softmax(-1)
    ref = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(ent, ref)
    ours, = torch.autograd.grad((ent * 2.0 + lp).sum(), logits)
    want, = torch.autograd.grad((ref * 2.0 + logp.gather(-1, y[..., None]).squeeze(-1)).sum(), logits)
    torch.testing.assert_close(ours, want)
    with pytest.raises(ValueError, match="entropy_grad needs with_entropy"):
        logprobs_from_logits(logits, y, entropy_grad=True)


def test_bf16_chunked_head_entropy_gradient_is_close():
    g = torch.Generator().manual_seed(2)
    h32, W32 = torch.randn(9, 16, generator=g), torch.randn(40, 16, generator=g) * 0.3
    y = torch.randint(0, 40, (9,), generator=g)
    h, W = h32.bfloat16().requires_grad_(), W32.bfloat16().requires_grad_()
    _, ent = linear_logprobs(h, W, y, chunk_rows=4, with_entropy=True, entropy_grad=True)
    gh, gW = torch.autograd.grad(ent.sum(), [h, W])
    hr, Wr = h.detach().float().requires_grad_(), W.detach().float().requires_grad_()
    _, ent_ref = _reference(hr, Wr, torch.zeros(40), y, 1.0)
    rh, rW = torch.autograd.grad(ent_ref.sum(), [hr, Wr])
    torch.testing.assert_close(gh.float(), rh, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(gW.float(), rW, atol=3e-2, rtol=3e-2)


def test_entropy_loss_plugin():
    from tests.unit.advantages.test_advantage_plugins import batch
    b = batch([1.0, 0.0], [0, 0], T=2)
    b.response_mask[1, 1] = False
    ent = torch.tensor([[0.5, 1.0], [2.0, 9.0]], requires_grad=True)
    loss, metrics = LOSSES.build("entropy", {"coef": 0.1})(MicroBatch(batch=b, logprobs=torch.zeros(2, 2,
                                                           requires_grad=True), entropy=ent))
    assert torch.allclose(loss, torch.tensor([[-0.05, -0.1], [-0.2, 0.0]]))
    assert float(metrics["entropy_bonus"]) == pytest.approx(3.5 / 3)
    loss.sum().backward()
    assert torch.allclose(ent.grad, torch.tensor([[-0.1, -0.1], [-0.1, 0.0]]))
    with pytest.raises(ValueError, match="with gradient"):
        LOSSES.build("entropy", {})(MicroBatch(batch=b, logprobs=torch.zeros(2, 2, requires_grad=True),
                                               entropy=ent.detach()))
    with pytest.raises(ValueError, match="coef must be > 0"):
        LOSSES.build("entropy", {"coef": 0})


def test_entropy_bonus_raises_the_entropy_of_a_real_model(tiny_model_dir):
    # the training forward (chunked head) with the bonus alone: one SGD step raises the batch's mean entropy
    from transformers import AutoModelForCausalLM

    from rlkit.forward import token_logprobs
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[5, 6, 7], [8, 9]]
    ids, mask = torch.tensor([[10, 11, 12], [13, 14, 0]]), torch.tensor([[True, True, True], [True, True, False]])

    def mean_entropy(grad: bool):
        _, ent = token_logprobs(model, prompts, ids, mask, pad_id=0, with_entropy=True, entropy_grad=grad)
        return (ent * mask).sum() / mask.sum()

    before = mean_entropy(True)
    (-before).backward()                                     # the bonus's loss: -H
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad / (p.grad.norm() + 1e-12)  # a descent step on -H
        after = float(mean_entropy(False))
    assert after > float(before.detach()) + 1e-4
