"""Counter-based seeded sampling shared by the hf engine's decoding loops.

The token at position t of a completion is ``argmax(filtered_logits / T + g)`` with Gumbel(0, 1) noise ``g``
derived from a hash of (completion seed, t, vocabulary index): an exact sample from the top-k / top-p filtered
softmax (the Gumbel-max trick) that does not depend on batch composition, padding or world size. Greedy when T = 0.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from rlkit.rollout import SamplingParams

_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Elementwise 32-bit integer hash on int64 tensors (values kept below 2^32, no overflow)."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return ((x >> 16) ^ x) & _M32


def gumbel_noise(seeds: torch.Tensor, position: int, vocab: int) -> torch.Tensor:
    """Gumbel(0,1) noise [B, V] that depends only on (seed[b], position, v)."""
    base = _hash32(seeds.long() * 0x9E3779B1 + position * 0x85EBCA6B)                  # [B]
    cols = torch.arange(vocab, device=seeds.device, dtype=torch.long)                  # [V]
    u = _hash32(base[:, None] ^ _hash32(cols * 0x27D4EB2F + 0x165667B1)[None, :])      # [B, V]
    u = (u.double() + 0.5) / 4294967296.0                                             # [B, V] in (0, 1)
    return -torch.log(-torch.log(u))                                                   # [B, V]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits [B, V] outside top-k / the top-p nucleus with -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]                        # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)             # [B, V]
        probs = torch.softmax(sorted_logits, dim=-1)                                   # [B, V]
        remove = probs.cumsum(-1) - probs > top_p                                      # [B, V] keep first above p
        logits = logits.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return logits


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into seeded sampling and records the sampled tokens' log-probs."""

    def __init__(self, seeds: torch.Tensor, params: SamplingParams, prompt_width: int):
        self.seeds, self.params, self.prompt_width = seeds, params, prompt_width
        self.prev_logp: torch.Tensor | None = None
        self.token_logprobs: list[torch.Tensor] = []

    def _record(self, tokens: torch.Tensor) -> None:
        if self.prev_logp is not None:
            self.token_logprobs.append(self.prev_logp.gather(1, tokens[:, None]).squeeze(1))  # [B]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._record(input_ids[:, -1])
        p = self.params
        logits = scores.float() / (p.temperature if p.temperature > 0 else 1.0)          # [B, V]
        if p.temperature > 0:
            logits = filter_logits(logits, p.top_k, p.top_p)                               # [B, V]
        self.prev_logp = torch.log_softmax(logits, dim=-1)                                 # [B, V] sampling dist.
        if p.temperature == 0:
            return logits
        position = input_ids.shape[1] - self.prompt_width
        return logits + gumbel_noise(self.seeds, position, logits.shape[-1]).to(logits.dtype)

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._record(sequences[:, -1])
        return torch.stack(self.token_logprobs, dim=1)                                     # [B, T]
