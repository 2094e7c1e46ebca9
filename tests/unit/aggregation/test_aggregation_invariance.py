"""Property: every registered aggregation gives the same loss whatever the micro-batch / world-size split.

The plan (coef[N], Z) is computed once over the global batch; each shard (a process, or one micro-batch of
it) contributes Σ_{i in shard} coef_i Σ_t w·ℓ / Z, and the shard contributions add up to the full-batch loss.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rlkit.aggregation  # noqa: F401  (registers the built-in aggregations)
from rlkit import functional as F
from rlkit import ops
from rlkit.registry import AGGREGATIONS


def _cuts(draw, n: int) -> list[int]:
    """Sorted split points 0 = c_0 < ... < c_k = n (empty shards allowed)."""
    inner = draw(st.lists(st.integers(0, n), max_size=4))
    return [0, *sorted(inner), n]


@st.composite
def batches(draw):
    n = draw(st.integers(1, 12))
    T = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, T, generator=gen, dtype=torch.float64)  # [N,T]
    keep = torch.rand(n, T, generator=gen) < draw(st.floats(0.0, 1.0))  # [N,T] bool
    float_weights = draw(st.booleans())
    weights = keep.double() * (torch.rand(n, T, generator=gen, dtype=torch.float64) if float_weights else 1.0)
    world = _cuts(draw, n)  # process shards (contiguous rows, like whole groups per rank)
    micro = [_cuts(draw, hi - lo) for lo, hi in zip(world[:-1], world[1:])]  # micro-batches inside each shard
    return loss, weights, world, micro


def _shard_sum(loss, weights, coef, z, lo, hi):
    per_seq = ops.masked_sum(loss[lo:hi], weights[lo:hi], dim=-1)  # [n]
    return (coef[lo:hi].double() * per_seq).sum() / z  # []


@settings(max_examples=50, deadline=None)
@given(batches())
def test_aggregation_split_invariance(case):
    loss, weights, world, micro = case
    N, T = loss.shape
    lengths = (weights > 0).sum(-1)  # [N] global lengths
    group_ids = torch.arange(N) // 2  # [N]
    names = AGGREGATIONS.names()
    assert {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"} <= set(names)
    for name in names:
        plan = AGGREGATIONS.build(name, {}).plan(lengths, group_ids, T)
        assert plan.coef.shape == (N,) and plan.normalizer > 0
        full = _shard_sum(loss, weights, plan.coef, plan.normalizer, 0, N)
        if name in F.AGGREGATION_MODES:
            torch.testing.assert_close(full, F.aggregate(loss, weights, name, max_len=T), atol=1e-6, rtol=0)
        split = torch.zeros((), dtype=torch.float64)
        for (lo, hi), cuts in zip(zip(world[:-1], world[1:]), micro):
            for a, b in zip(cuts[:-1], cuts[1:]):
                split = split + _shard_sum(loss, weights, plan.coef, plan.normalizer, lo + a, lo + b)
        assert abs(split.item() - full.item()) < 1e-6, name
        if not (weights > 0).any():
            assert full.item() == 0.0, name


@settings(max_examples=40, deadline=None)
@given(batches(), st.floats(0.05, 1.0), st.floats(0.2, 1.0))
def test_split_invariance_with_d3s_masks(case, token_ratio, sample_ratio):
    """The same property when the token weights are a D³S selection (dropped samples and tokens)."""
    loss, weights, world, micro = case
    N, T = loss.shape
    gen = torch.Generator().manual_seed(N * 31 + T)
    mask = weights > 0                                                                      # [N, T]
    adv = torch.randn(N, generator=gen)                                                     # [N]
    entropy = torch.rand(N, T, generator=gen)                                               # [N, T]
    rows = F.d3s_select_samples(adv, torch.zeros(N, dtype=torch.long), F.d3s_keep_count(sample_ratio, N)) \
        if N >= 2 else torch.ones(N, dtype=torch.bool)
    d3s = F.d3s_select_tokens(adv, entropy, mask & rows[:, None], token_ratio).double()     # [N, T]
    lengths = (d3s > 0).sum(-1)
    for name in AGGREGATIONS.names():
        plan = AGGREGATIONS.build(name, {}).plan(lengths, torch.arange(N) // 2, T)
        full = _shard_sum(loss, d3s, plan.coef, plan.normalizer, 0, N)
        split = sum(_shard_sum(loss, d3s, plan.coef, plan.normalizer, lo + a, lo + b)
                    for (lo, hi), cuts in zip(zip(world[:-1], world[1:]), micro) for a, b in zip(cuts[:-1], cuts[1:]))
        assert abs(float(split) - full.item()) < 1e-6, name
