"""Checks of rlkit.ops: group and masked reductions, logprobs/entropy from logits, input packing."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit import ops

NAN = float("nan")


def test_group_sum_unsorted_ids():
    sums, counts, inverse = ops.group_sum(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([9, 2, 9, 5]))
    # ascending ids 2, 5, 9: sums [2, 4, 1 + 3]
    assert sums.tolist() == [2.0, 4.0, 4.0] and counts.tolist() == [1, 1, 2] and inverse.tolist() == [2, 0, 2, 1]


def test_group_mean_std_nan_aware():
    values = torch.tensor([1.0, 2.0, NAN, 4.0, 10.0, NAN])
    groups = torch.tensor([3, 3, 3, 8, 5, 6])
    mean, std, count = ops.group_mean_std(values, groups)
    # group 3 valid [1, 2]: mean 1.5, Bessel var = (.25 + .25)/1 = .5, std .707107; groups 8, 5 singletons
    # group 6 has no valid value: mean 0, std 0, count 0
    torch.testing.assert_close(mean, torch.tensor([1.5, 1.5, 1.5, 4.0, 10.0, 0.0]))
    s = math.sqrt(0.5)
    torch.testing.assert_close(std, torch.tensor([s, s, s, 0.0, 0.0, 0.0]))
    assert count.tolist() == [2, 2, 2, 1, 1, 0]
    _, pop, _ = ops.group_mean_std(values, groups, unbiased=False)
    torch.testing.assert_close(pop[:3], torch.tensor([0.5, 0.5, 0.5]))  # population var = .25


def test_group_min_max():
    low, high = ops.group_min_max(torch.tensor([3.0, NAN, 1.0, 7.0]), torch.tensor([1, 1, 1, 2]))
    assert low.tolist() == [1.0, 1.0, 1.0, 7.0] and high.tolist() == [3.0, 3.0, 3.0, 7.0]


def test_masked_ops():
    x = torch.tensor([[1.0, NAN, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    # selected values [1, 3]: sum 4, mean 2, Bessel var ((1-2)^2 + (3-2)^2)/1 = 2, population var 1
    assert ops.masked_sum(x, mask).item() == 4.0
    assert ops.masked_mean(x, mask).item() == 2.0
    assert ops.masked_var(x, mask).item() == 2.0 and ops.masked_var(x, mask, unbiased=False).item() == 1.0
    assert ops.masked_mean(x, mask, dim=-1).tolist() == [2.0, 0.0]  # empty row -> 0, not NaN
    assert ops.masked_sum(x, mask, dim=0).tolist() == [1.0, 0.0, 3.0]
    empty = torch.zeros_like(mask)
    assert ops.masked_mean(x, empty).item() == 0.0 and ops.masked_var(x, empty).item() == 0.0
    assert ops.masked_var(x, torch.tensor([[True, False, False], [False] * 3])).item() == 0.0


def test_build_inputs_indices():
    prompts = [[11, 12, 13], [21]]
    response_ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    response_mask = torch.tensor([[True, True, False], [True, True, True]])
    input_ids, attention_mask, index = ops.build_inputs(prompts, response_ids, response_mask, pad_id=0)
    # row 0 = 3 prompt + 2 response = 5 tokens; row 1 = 1 + 3 = 4 tokens, one pad -> S = 5
    assert input_ids.tolist() == [[11, 12, 13, 5, 6], [21, 7, 8, 9, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # logit at position len(prompt) - 1 + t predicts response token t; row 0 t=2 (masked) -> 4 (still valid)
    assert index.tolist() == [[2, 3, 4], [0, 1, 2]]
    for i in range(2):
        for t in range(3):
            if response_mask[i, t]:
                assert input_ids[i, index[i, t] + 1] == response_ids[i, t]


def test_build_inputs_clamps_masked_index_and_rejects_empty_prompt():
    ids, _, index = ops.build_inputs([[1, 2, 3]], torch.tensor([[5, 0, 0, 0]]),
                                     torch.tensor([[True, False, False, False]]), pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5]] and index.tolist() == [[2, 3, 3, 3]]  # 4, 5 clamped to S-1 = 3
    with pytest.raises(ValueError, match="empty prompt"):
        ops.build_inputs([[]], torch.tensor([[5]]), torch.tensor([[True]]), pad_id=0)


def test_gather_response_logits():
    logits = torch.randn(2, 5, 7)
    index = torch.tensor([[2, 3, 4], [0, 1, 2]])
    out = ops.gather_response_logits(logits, index)
    assert out.shape == (2, 3, 7)
    assert torch.equal(out[1, 2], logits[1, 2]) and torch.equal(out[0, 0], logits[0, 2])


def _naive(logits, targets, temperature=1.0):
    logp = torch.log_softmax(logits.double() / temperature, -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 100])
def test_logprobs_from_logits_matches_naive(chunk_rows):
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11) * 3, torch.randint(0, 11, (2, 5))
    logprobs, entropy = ops.logprobs_from_logits(logits, targets, temperature=0.7, with_entropy=True,
                                                 chunk_rows=chunk_rows)
    ref_lp, ref_h = _naive(logits, targets, 0.7)
    assert logprobs.dtype == torch.float32 and logprobs.shape == (2, 5)
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy.double(), ref_h, atol=1e-5, rtol=0)
    assert ops.logprobs_from_logits(logits, targets)[1] is None


def test_logprobs_gradient_matches_autograd():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (2, 3))
    fn = lambda x: ops.logprobs_from_logits(x, targets, temperature=1.3, chunk_rows=4)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
    weights = torch.randn(2, 3, dtype=torch.float64)
    (fn(logits) * weights).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    (_naive(ref, targets, 1.3)[0] * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_logprobs_bf16_in_fp32_and_uniform_entropy():
    logits = torch.randn(3, 4, 50).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, 50, (3, 4))
    logprobs, entropy = ops.logprobs_from_logits(logits, targets, with_entropy=True, chunk_rows=5)
    ref_lp, _ = _naive(logits.detach().float(), targets)
    assert logprobs.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=1e-5, rtol=0)
    logprobs.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.shape == logits.shape
    # uniform distribution over V = 50 tokens: entropy = log 50
    _, h = ops.logprobs_from_logits(torch.zeros(1, 2, 50), torch.zeros(1, 2, dtype=torch.long), with_entropy=True)
    torch.testing.assert_close(h, torch.full((1, 2), math.log(50)))


def test_right_pad():
    from rlkit.ops import right_pad
    ids, mask = right_pad([[5, 6, 7], [], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [8, 0, 0]]
    assert mask.tolist() == [[True, True, True], [False] * 3, [True, False, False]]
    vals, _ = right_pad([[-0.5], []], 0.0, dtype=torch.float32)
    assert vals.dtype == torch.float32 and vals.tolist() == [[-0.5], [0.0]]
    assert right_pad([[], []], 0)[0].shape == (2, 1)   # an all-empty batch keeps one column
