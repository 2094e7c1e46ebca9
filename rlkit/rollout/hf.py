"""``rollout.engine: hf`` -- batched transformers ``generate`` on the training model itself.

The engine samples from the live policy module (no copy), so ``sync_weights`` is free. Sampling is
counter-based: the token at position t of a completion is ``argmax(filtered_logits/T + g)`` with Gumbel noise
``g`` derived from a hash of (completion seed, t, vocab index) -- an exact sample from the top-k/top-p filtered
softmax (Gumbel-max trick), independent of batch composition, padding and world size. Greedy when T = 0.

Options: ``batch_size`` (completions per ``generate`` call, default 64).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlkit.registry import ENGINES
from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, RolloutEngine, SamplingParams
from rlkit.rollout.weights import is_sharded

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


@ENGINES.register("hf")
class HFEngine(RolloutEngine):
    """Batched ``model.generate`` on the live policy with seeded (counter-based) sampling.

    With a sharded policy (FSDP2, ZeRO-3) generation runs with ``synced_gpus``: each decoding step all-gathers the
    layers on every rank, so all ranks step until the longest completion anywhere ends. This needs every rank to
    make the same number of ``generate`` calls, which holds for equal per-rank prompt counts; for speed use vLLM."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"rollout.engine.batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.eos_ids = _eos_ids(model, tokenizer)

    def sync_weights(self, model) -> dict[str, float]:
        self.model = model  # same module: nothing to copy
        return {}

    @torch.no_grad()
    def generate(self, prompt_ids, seeds, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding per call
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            out.extend(zip(rows, self._generate_chunk([prompt_ids[i] for i in rows], [seeds[i] for i in rows],
                                                      params)))
        out.sort(key=lambda pair: pair[0])
        return [c for _, c in out]

    def _generate_chunk(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams):
        model, pad = self.model, self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)              # [B, Sp] left-padded
        attention = torch.zeros((len(prompts), width), dtype=torch.long)                   # [B, Sp]
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        sampler = SeededSampler(torch.tensor(seeds, device=device), params, width)
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eos_ids, pad_token_id=pad)
        was_training = model.training
        model.eval()
        try:
            # sharded policy (FSDP2 / ZeRO-3): every forward all-gathers, so every rank keeps stepping until the
            # longest sequence on any rank ends (transformers' synced_gpus), or the ranks would deadlock
            seqs = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                  generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                                  synced_gpus=is_sharded(model))
        finally:
            model.train(was_training)
        logprobs = sampler.finish(seqs).cpu()                                              # [B, T]
        return [_to_completion(row, lp, self.eos_ids, params.max_new_tokens)
                for row, lp in zip(seqs[:, width:].cpu(), logprobs)]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    if ids is None:
        raise ValueError("the tokenizer has no eos_token and the model's generation_config no eos_token_id; "
                         "generation could never stop -- set one in the tokenizer/generation_config")
    return list(ids) if isinstance(ids, (list, tuple)) else [int(ids)]


def _to_completion(tokens: torch.Tensor, logprobs: torch.Tensor, eos_ids: list[int], max_new: int) -> Completion:
    ids = tokens.tolist()
    stop = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    length = stop + 1 if stop is not None else min(len(ids), max_new)
    return Completion(token_ids=ids[:length], logprobs=logprobs[:length].tolist(),
                      finish_reason=FINISH_STOP if stop is not None else FINISH_LENGTH)
