"""Padding and time of one training pass: fixed micro-batches vs token-budget micro-batches (packed or padded).

A synthetic rollout batch with a long-tailed length distribution (prompt lengths uniform in [16, 64], response
lengths lognormal, median ``--median`` tokens, sigma ``--sigma``, clipped so prompt + response <= ``--max-len``)
goes through forward + backward of the policy, micro-batch by micro-batch, exactly as in ``rlkit.update``
(``response_logprobs`` with the chunked LM head, loss = -Σ logprobs / tokens, one backward per micro-batch).

Layouts:
  fixed    ``train.micro_batch_size`` consecutive rows, right-padded to the longest row (rlkit's default)
  budget   ``train.max_tokens_per_micro`` with ``pack_sequences=false``: rows sorted by length, rows x longest
           <= budget, right-padded (verl's dynamic batch size)
  packed   ``train.max_tokens_per_micro`` (default ``pack_sequences=true``): first-fit decreasing groups of <= budget
           tokens, each one padding-free row with position ids restarting at 0 (block-diagonal attention)

Reported per layout: micro-batches, model tokens processed (rows x padded width, or the packed length), padding
tokens among them, padding avoided vs fixed, and the time of the whole pass (median over ``--repeats``, after one
warm-up pass). Note for CPU: PyTorch's sdpa with a block-diagonal boolean mask still computes the dense
[L, L] attention of a packed row, so packing saves MLP / LM-head / norm work but not attention FLOPs there; GPU
flash/varlen kernels skip the masked blocks.

Usage: python benchmarks/packing.py [--completions 96 --max-len 1024 --micro-batch-size 8 --budget 2048
           --hidden 128 --layers 4 --repeats 3 --threads 1 --json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rlkit import ops  # noqa: E402
from rlkit.batch import RolloutBatch  # noqa: E402
from rlkit.forward import ForwardSpec, micro_batch_groups, response_logprobs  # noqa: E402


def make_model(hidden: int, layers: int, max_len: int, vocab: int = 320):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 64),
                      intermediate_size=4 * hidden, max_position_embeddings=max_len, tie_word_embeddings=True,
                      attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).train()


def make_batch(n: int, max_len: int, median: float, sigma: float, vocab: int = 320, seed: int = 0) -> RolloutBatch:
    """n rows: prompt ~ U[16, 64], response ~ lognormal(log median, sigma) clipped to [1, max_len - prompt]."""
    gen = torch.Generator().manual_seed(seed)
    plen = torch.randint(16, 65, (n,), generator=gen)  # [N]
    raw = torch.exp(math.log(median) + sigma * torch.randn(n, generator=gen))  # [N]
    rlen = torch.minimum(raw.round().long().clamp(min=1), max_len - plen)  # [N]
    responses = [torch.randint(5, vocab, (int(k),), generator=gen).tolist() for k in rlen]
    ids, mask = ops.right_pad(responses, 0)  # [N, T], [N, T]
    zeros = torch.zeros(n)
    return RolloutBatch(prompt_ids=[torch.randint(5, vocab, (int(k),), generator=gen).tolist() for k in plen],
                        response_ids=ids, response_mask=mask, rollout_logprobs=torch.zeros(ids.shape),
                        truncated=zeros.bool(), group_ids=torch.arange(n) // 8, rewards=zeros, success=zeros,
                        reward_components=zeros[:, None])


def layout_stats(batch: RolloutBatch, groups: list[torch.Tensor], packed: bool) -> dict:
    lengths = ops.sequence_lengths(batch.prompt_ids, batch.response_mask)  # [N]
    real = int(lengths.sum())
    processed = sum(int(lengths[g].sum()) if packed else len(g) * int(lengths[g].max()) for g in groups)
    return {"micro_batches": len(groups), "real_tokens": real, "processed_tokens": processed,
            "padding_tokens": processed - real, "max_micro_tokens": max(
                int(lengths[g].sum()) if packed else len(g) * int(lengths[g].max()) for g in groups)}


def training_pass(model, batch: RolloutBatch, groups: list[torch.Tensor], packed: bool) -> float:
    """Forward + backward over every micro-batch (gradients accumulate, as in rlkit.update); seconds."""
    model.zero_grad(set_to_none=True)
    tokens = batch.response_mask.sum()
    t0 = time.perf_counter()
    for idx in groups:
        rows = batch.select(idx)
        spec = ForwardSpec(pad_id=0, max_tokens_per_micro="auto" if packed else None,
                           pack_sequences=packed)   # this micro-batch as one packed row, or right-padded rows
        logprobs, _ = response_logprobs(model, rows, spec, with_entropy=True)  # [n, T]
        (-(logprobs * rows.response_mask).sum() / tokens).backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--completions", type=int, default=96)
    ap.add_argument("--max-len", type=int, default=1024, help="prompt + response tokens at most")
    ap.add_argument("--median", type=float, default=120.0, help="median response length (lognormal)")
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma of the response lengths")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="rows per fixed micro-batch")
    ap.add_argument("--budget", type=int, default=2048, help="train.max_tokens_per_micro for the budget layouts")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = make_model(args.hidden, args.layers, args.max_len + 64)
    batch = make_batch(args.completions, args.max_len, args.median, args.sigma)
    lengths = ops.sequence_lengths(batch.prompt_ids, batch.response_mask).float()
    print(f"{args.completions} completions, tokens per sequence: mean {lengths.mean():.0f}, median "
          f"{lengths.median():.0f}, p90 {lengths.quantile(0.9):.0f}, max {lengths.max():.0f}; model hidden "
          f"{args.hidden}, {args.layers} layers, V=320; fixed micro_batch_size={args.micro_batch_size}, token budget "
          f"{args.budget}; {args.threads} thread(s), {args.repeats} timed passes after a warm-up")
    layouts = {"fixed": (micro_batch_groups(batch, args.micro_batch_size), False),
               "budget": (micro_batch_groups(batch, args.micro_batch_size, args.budget, packed=False), False),
               "packed": (micro_batch_groups(batch, args.micro_batch_size, args.budget, packed=True), True)}
    results = {}
    for name, (groups, packed) in layouts.items():
        stats = layout_stats(batch, groups, packed)
        training_pass(model, batch, groups, packed)  # warm-up
        times = [training_pass(model, batch, groups, packed) for _ in range(args.repeats)]
        stats |= {"time_s": statistics.median(times), "times_s": times}
        results[name] = stats
    fixed = results["fixed"]
    print(f"\n{'layout':7} {'micro':>6} {'processed':>10} {'padding':>9} {'pad %':>6} {'avoided':>8} "
          f"{'max/micro':>9} {'time s':>8} {'vs fixed':>8} {'real tok/s':>10}")
    for name, r in results.items():
        r["padding_avoided"] = fixed["padding_tokens"] - r["padding_tokens"]
        r["time_ratio"] = r["time_s"] / fixed["time_s"]
        print(f"{name:7} {r['micro_batches']:6d} {r['processed_tokens']:10d} {r['padding_tokens']:9d} "
              f"{100 * r['padding_tokens'] / r['processed_tokens']:6.1f} {r['padding_avoided']:8d} "
              f"{r['max_micro_tokens']:9d} {r['time_s']:8.2f} {r['time_ratio']:8.2f} "
              f"{r['real_tokens'] / r['time_s']:10.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
