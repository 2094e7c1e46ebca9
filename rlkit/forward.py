"""Policy forward passes over response tokens: per-token log-probs (and entropy) for rows of a RolloutBatch."""

from __future__ import annotations

import torch

from rlkit import ops
from rlkit.batch import RolloutBatch


def response_logprobs(model, batch: RolloutBatch, *, pad_id: int, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token) [n, T] (0 where masked) and optionally the entropy [n, T] for every row of ``batch``."""
    return token_logprobs(model, batch.prompt_ids, batch.response_ids, batch.response_mask, pad_id=pad_id,
                          temperature=temperature, with_entropy=with_entropy)


def token_logprobs(model, prompt_ids: list[list[int]], response_ids: torch.Tensor, response_mask: torch.Tensor, *,
                   pad_id: int, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response_ids[i,t] | prompt_i, response_i[:t]) [n, T], 0 where ``response_mask`` [n, T] is False."""
    device = next(model.parameters()).device
    input_ids, attention_mask, response_index = ops.build_inputs(
        prompt_ids, response_ids.cpu(), response_mask.cpu(), pad_id)                       # [n,S], [n,S], [n,T]
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    logits = ops.gather_response_logits(out.logits, response_index.to(device))             # [n, T, V]
    targets = response_ids.to(device)                                                      # [n, T]
    logprobs, entropy = ops.logprobs_from_logits(logits, targets, temperature=temperature if temperature > 0 else 1.0,
                                                 with_entropy=with_entropy)               # [n, T], [n, T]
    mask = response_mask.to(device)                                                        # [n, T]
    logprobs = logprobs * mask
    if entropy is not None:
        entropy = entropy * mask
    return logprobs, entropy


@torch.no_grad()
def over_micro_batches(models: list, batch: RolloutBatch, micro_batch_size: int, autocast, fn) -> list:
    """``fn(rows)`` for consecutive micro-batches of ``batch``, without grad and with ``models`` in eval mode."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        out = []
        for start in range(0, len(batch), micro_batch_size):
            rows = batch.select(torch.arange(start, min(start + micro_batch_size, len(batch))))
            with autocast():
                out.append(fn(rows))
        return out
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def score_batch(model, batch: RolloutBatch, *, pad_id: int, micro_batch_size: int, temperature: float,
                with_entropy: bool, autocast) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs [N, T] (and entropy [N, T]) of ``model`` over the whole batch, micro-batch by micro-batch."""
    parts = over_micro_batches([model], batch, micro_batch_size, autocast, lambda rows: response_logprobs(
        model, rows, pad_id=pad_id, temperature=temperature, with_entropy=with_entropy))
    logps = torch.cat([lp.float().cpu() for lp, _ in parts])                               # [N, T]
    return logps, (torch.cat([ent.float().cpu() for _, ent in parts]) if with_entropy else None)
