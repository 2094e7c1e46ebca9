"""``rollout.engine: hf`` -- batched, KV-cached sampling on the training model itself.

The engine samples from the live policy module (no copy), so ``sync_weights`` is free. Sampling is
counter-based (:mod:`rlkit.rollout.seeded_sampling`): the token at position t of a completion is
``argmax(filtered_logits/T + g)`` with Gumbel noise ``g`` derived from a hash of (completion seed, t, vocab index)
-- an exact sample from the top-k/top-p filtered softmax, independent of batch composition, padding and world
size. Greedy when T = 0. Decoding drops finished rows from the batch (:mod:`rlkit.rollout.hf_decode`); a sharded
policy decodes with transformers' ``generate`` and ``synced_gpus`` instead.

Options: ``batch_size`` (completions decoded together, default 256; the KV cache holds batch_size x (prompt +
max_new_tokens) tokens: 256 x 2k tokens of Qwen2.5-0.5B in bf16 = 6 GiB).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList

from rlkit.registry import ENGINES
from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, RolloutEngine, SamplingParams
from rlkit.rollout.hf_decode import sample_compacting
from rlkit.rollout.seeded_sampling import SeededSampler
from rlkit.rollout.weights import is_sharded


@ENGINES.register("hf")
class HFEngine(RolloutEngine):
    """Batched KV-cached decoding on the live policy with seeded (counter-based) sampling.

    With a sharded policy (FSDP2, ZeRO-3) generation runs through ``generate`` with ``synced_gpus``: each decoding step all-gathers the
    layers on every rank, so all ranks step until the longest completion anywhere ends. This needs every rank to
    make the same number of ``generate`` calls, which holds for equal per-rank prompt counts; for speed use vLLM."""

    device_memory = "generation_kv"   # the KV cache of batch_size sequences at a time

    def __init__(self, model, tokenizer, batch_size: int = 256):
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
        input_ids, attention = input_ids.to(device), attention.to(device)
        seeds_t = torch.tensor(seeds, device=device)                                      # [B]
        was_training = model.training
        model.eval()
        try:
            if not is_sharded(model):
                return sample_compacting(model, input_ids, attention, seeds_t, params, self.eos_ids)
            return self._generate_synced(input_ids, attention, seeds_t, params)
        finally:
            model.train(was_training)

    def _generate_synced(self, input_ids, attention, seeds, params: SamplingParams) -> list[Completion]:
        """Sharded policy (FSDP2 / ZeRO-3): every forward all-gathers, so every rank keeps stepping until the
        longest sequence on any rank ends (transformers' ``synced_gpus``), or the ranks would deadlock."""
        width = input_ids.shape[1]
        sampler = SeededSampler(seeds, params, width)
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        seqs = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                   logits_processor=LogitsProcessorList([sampler]), synced_gpus=True)
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
