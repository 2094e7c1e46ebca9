"""The hf engine's decoding loop: KV-cached sampling that drops finished rows from the batch.

transformers' ``generate`` keeps every row of the batch in each decoding step until the longest one ends, so with
long-tailed lengths (most completions stop early, a few run to the cap) most of the work goes to rows that have
already finished. Here finished rows leave the batch, and the KV cache, as soon as they are an eighth of it
(``COMPACT_SHARE``; copying the cache has a cost too): step t costs about one forward of the rows still running. Sampling is the same counter-based Gumbel-max rule as
:class:`rlkit.rollout.seeded_sampling.SeededSampler` (token t of a completion depends on its seed and t only), so
which rows share a step never changes what a row samples beyond float rounding of the logits.

Positions follow the attention mask (left padding: the first real token is position 0), as ``generate`` computes
them. Caches other than plain key/value ones (linear-attention or static layers) keep finished rows (correct,
only slower).
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams
from rlkit.rollout.seeded_sampling import filter_logits, gumbel_noise

COMPACT_SHARE = 1 / 8   # drop finished rows from the batch and cache once they are this share of the batch


def _compactable(cache) -> bool:
    """Only plain key/value caches can drop rows: a linear-attention or static layer keeps per-row state that
    ``batch_select_indices`` does not (or cannot) select."""
    layers = getattr(cache, "layers", None)
    return type(cache) is DynamicCache and bool(layers) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _keeps_last_logits(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.inference_mode()
def sample_compacting(model, input_ids: torch.Tensor, attention: torch.Tensor, seeds: torch.Tensor,
                      params: SamplingParams, eos_ids: list[int]) -> list[Completion]:
    """Sample up to ``params.max_new_tokens`` tokens after each left-padded prompt row.

    Args:
        input_ids: [B, Sp] long, left-padded prompts.  attention: [B, Sp] long 1 on prompt tokens.
        seeds: [B] long, one sampling seed per row.
    """
    B = input_ids.shape[0]
    device = input_ids.device
    eos = torch.tensor(eos_ids, device=device)                                         # [E]
    position = (attention.cumsum(-1) - 1).clamp(min=0)                                 # [B, Sp]
    extra = {"logits_to_keep": 1} if _keeps_last_logits(model) else {}
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=position, use_cache=True, **extra)
    cache, active = out.past_key_values, torch.arange(B, device=device)                # rows still decoding [b]
    compact = _compactable(cache)
    next_pos = position[:, -1] + 1                                                     # [b]
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []                  # (rows, tokens, logprobs)
    running = torch.ones(B, dtype=torch.bool, device=device)                           # [b] False = finished
    for t in range(params.max_new_tokens):
        token, logp = _sample(out.logits[:, -1], seeds[active], t, params)             # [b], [b]
        steps.append((active[running], token[running], logp[running]))
        running = running & ~torch.isin(token, eos)                                    # [b]
        if t == params.max_new_tokens - 1 or not running.any():
            break
        done = len(running) - int(running.sum())
        if compact and done and done >= COMPACT_SHARE * len(running):
            keep = running.nonzero().squeeze(-1)                                       # [b']
            cache.batch_select_indices(keep)
            active, token, attention, next_pos = active[keep], token[keep], attention[keep], next_pos[keep]
            running = running[keep]
        attention = torch.cat([attention, attention.new_ones(len(active), 1)], dim=-1)  # [b, Sp + t + 1]
        out = model(input_ids=token[:, None], attention_mask=attention, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
    return _completions(steps, B, eos_ids)


def _sample(logits: torch.Tensor, seeds: torch.Tensor, position: int,
            params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Token [b] and its log-prob [b] under the (temperature, top-k, top-p) sampling distribution."""
    logits = logits.float() / (params.temperature if params.temperature > 0 else 1.0)   # [b, V]
    if params.temperature > 0:
        logits = filter_logits(logits, params.top_k, params.top_p)                       # [b, V]
    logp = torch.log_softmax(logits, dim=-1)                                             # [b, V]
    pick = logits if params.temperature == 0 else logits + gumbel_noise(seeds, position, logits.shape[-1]).to(logits.dtype)
    token = pick.argmax(-1)                                                              # [b]
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _completions(steps, n: int, eos_ids: list[int]) -> list[Completion]:
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    for rows, token, logp in steps:
        for i, tok, lp in zip(rows.tolist(), token.tolist(), logp.tolist()):
            tokens[i].append(tok)
            logprobs[i].append(lp)
    stop = set(eos_ids)
    return [Completion(token_ids=ids, logprobs=lps, finish_reason=FINISH_STOP if ids and ids[-1] in stop
                       else FINISH_LENGTH) for ids, lps in zip(tokens, logprobs)]
