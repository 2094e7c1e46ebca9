"""``rlkit sft``: supervised warm start -- on (prompt, answer) pairs, or on whole conversations with tool calls.

RL needs a policy that sometimes succeeds; a randomly initialised or off-task model gives all-zero rewards and
therefore zero GRPO advantages. ``rlkit sft`` teaches the answer format (and some skill) first. It uses the same
data loading, chat templates and accelerate set-up as ``rlkit train``, and writes a Hugging Face checkpoint that a
recipe's ``model.name_or_path`` can point at.

Pairs (default): cross-entropy on the answer tokens + EOS after the (templated) prompt.

Conversations (``messages_column``, e.g. ``rlkit sft --messages-column teacher_messages --tools
rlkit.tasks.tool_multiply:multiply``): each row's message list is rendered once with the tokenizer's chat template
(``tools`` = the JSON schemas of the named functions) and tokenized without BOS. The loss covers exactly what the
model itself produces in an episode: every assistant turn's tokens up to and including the special token that ends
the turn (``<|im_end|>`` in ChatML), and nothing else -- system, user and tool messages, the assistant headers
(``<|im_start|>assistant\\n``) and the template's text after the end-of-turn token are context. Assistant turn k
spans the characters from the end of ``render(messages[:k], add_generation_prompt=True)`` to the end of
``render(messages[:k+1])``, cut after its last special token; characters map to tokens through the fast
tokenizer's offsets. Templates whose renderings are not prefixes of one another are refused. A step's rows are sorted
by length and run in micro-batches of ``MICRO_ROWS`` (one backward), so short conversations are not padded to the
longest one (on ``tool_multiply`` about 1.6x faster; same loss and gradient).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from rlkit.config import ModelConfig
from rlkit.data import PromptSource, load_prompt_dataset
from rlkit.forward import token_logprobs
from rlkit.ops import right_pad
from rlkit.modeling import check_model_source, load_causal_lm, load_tokenizer
from rlkit.console import Progress

log = logging.getLogger("rlkit")

# (prompt ids per row, response ids [n, T], loss mask [n, T] bool); a step's rows come as a list of these
Batch = tuple[list[list[int]], torch.Tensor, torch.Tensor]
MICRO_ROWS = 8   # conversation rows per forward pass, after sorting a step's rows by length


@dataclass
class SFTConfig:
    model: str
    data: str
    output: str
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    chat_template: str | bool = "auto"
    seed: int = 0
    messages_column: str | None = None   # train on conversations (module docstring) instead of prompt/answer
    tools: list[str] = field(default_factory=list)   # "module:function" refs rendered into the template


def _targets(tokenizer, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer token ids + EOS, right-padded: ids [n, T] long, mask [n, T] bool."""
    seqs = [tokenizer(str(a), add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for a in answers]
    return right_pad(seqs, tokenizer.pad_token_id)                                         # [n, T], [n, T]


def _pair_batches(cfg: SFTConfig, tokenizer) -> Callable[[int, int], list[Batch]]:
    dataset = load_prompt_dataset(cfg.data, prompt_column=cfg.prompt_column)
    if cfg.answer_column not in dataset.column_names:
        raise ValueError(f"answer column '{cfg.answer_column}' not in {cfg.data} (columns: {dataset.column_names})")
    source = PromptSource(dataset, tokenizer, prompt_column=cfg.prompt_column, chat_template=cfg.chat_template,
                          seed=cfg.seed)

    def batch(start: int, size: int) -> list[Batch]:
        items = source.batch(start, size)
        ids, mask = _targets(tokenizer, [it.columns[cfg.answer_column] for it in items])   # [n, T], [n, T]
        return [([it.prompt_ids for it in items], ids, mask)]

    return batch


def tool_schemas(refs: list[str]) -> list[dict[str, Any]]:
    """JSON schemas (``get_json_schema``) of the functions named ``module:function``."""
    from transformers.utils import get_json_schema
    from rlkit.registry import import_object
    schemas = []
    for ref in refs:
        fn = import_object(ref)
        if not callable(fn):
            raise ValueError(f"tool '{ref}' is a {type(fn).__name__}, not a function; name a function, e.g. "
                             f"rlkit.tasks.tool_multiply:multiply")
        try:
            schemas.append(get_json_schema(fn))
        except Exception as exc:  # noqa: BLE001  (transformers raises several types for bad docstrings)
            raise ValueError(f"tool '{ref}' has no usable JSON schema ({exc}); give it type hints and a "
                             f"Google-style docstring with an Args: section") from exc
    return schemas


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` characters of each assistant turn (header excluded)."""
    full = _render(tokenizer, messages, tools, False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise ValueError("conversation starts with an assistant message; SFT needs a prompt before it "
                             f"(messages: {[m['role'] for m in messages]})")
        head = _render(tokenizer, messages[:k], tools, True)
        turn = _render(tokenizer, messages[:k + 1], tools, False)
        for shorter, longer, what in ((head, turn, f"messages[:{k}] + generation prompt"),
                                      (turn, full, f"messages[:{k + 1}]")):
            if not longer.startswith(shorter):
                raise ValueError(f"the chat template is not prefix-stable: the rendering of {what} is not a "
                                 f"prefix of the longer conversation's ({shorter[-60:]!r} vs "
                                 f"{longer[len(shorter) - 60:len(shorter)]!r}); SFT on messages needs a template "
                                 f"that never rewrites earlier turns (ChatML/Qwen2.5, `rlkit tiny-model --tools`)")
        spans.append((len(head), len(turn)))
    if not spans:
        raise ValueError(f"conversation has no assistant message to train on (roles: {[m['role'] for m in messages]})")
    return full, spans


def encode_conversation(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation (no BOS) and the loss mask: True on the assistant turns' tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"SFT on messages maps characters to tokens with offsets, which needs a fast (Rust) "
                         f"tokenizer; {type(tokenizer).__name__} is not one (load it with use_fast=True)")
    text, spans = assistant_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    mask = [False] * len(ids)
    for start, end in spans:
        inside = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]   # tokens overlapping the turn
        if not inside:
            raise ValueError(f"assistant turn at characters {start}..{end} of {text!r:.200} maps to no token")
        last = max((i for i in inside if ids[i] in special), default=inside[-1])     # the end-of-turn token
        for i in inside:
            mask[i] = i <= last
    return ids, mask


def _clean(messages: Any, row: int) -> list[dict]:
    """Drop the ``None`` fields that ``datasets`` fills in when message dicts of one column differ in keys."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError(f"row {row}: expected a list of {{'role', 'content', ...}} messages, got {messages!r:.100}")
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _message_batches(cfg: SFTConfig, tokenizer) -> Callable[[int, int], list[Batch]]:
    """Stream positions -> micro-batches of ``MICRO_ROWS`` rows of similar length (short rows are not padded to
    the longest conversation of the step; the step's gradient is the same)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--messages-column needs a tokenizer with a chat template; {cfg.model}'s has none "
                         f"(for a local test model: `rlkit tiny-model DIR --tools`)")
    dataset = load_prompt_dataset(cfg.data, prompt_column=cfg.messages_column)
    tools = tool_schemas(cfg.tools) or None
    rows = []
    for r, messages in enumerate(dataset[cfg.messages_column]):
        ids, mask = encode_conversation(tokenizer, _clean(messages, r), tools)
        if len(ids) > tokenizer.model_max_length:
            raise ValueError(f"row {r} of {cfg.data}: {len(ids)} tokens, more than the tokenizer's "
                             f"model_max_length {tokenizer.model_max_length}; shorten or drop it")
        first = mask.index(True)                                  # prompt = everything before the first turn
        rows.append((ids[:first], ids[first:], mask[first:]))
    order = functools.lru_cache(maxsize=2)(
        lambda epoch: np.random.default_rng([cfg.seed, epoch]).permutation(len(rows)))

    def batch(start: int, size: int) -> list[Batch]:
        picked = [rows[int(order(p // len(rows))[p % len(rows)])] for p in range(start, start + size)]
        picked.sort(key=lambda r: len(r[0]) + len(r[1]))
        micro = []
        for chunk in (picked[i:i + MICRO_ROWS] for i in range(0, len(picked), MICRO_ROWS)):
            ids, _ = right_pad([r[1] for r in chunk], tokenizer.pad_token_id)              # [n, T]
            mask, _ = right_pad([r[2] for r in chunk], False, dtype=torch.bool)             # [n, T]
            micro.append(([r[0] for r in chunk], ids, mask))
        return micro

    return batch


def run_sft(cfg: SFTConfig) -> Path:
    if cfg.tools and not cfg.messages_column:
        raise ValueError(f"--tools {' '.join(cfg.tools)} only applies to conversations; add --messages-column")
    mcfg = ModelConfig(name_or_path=cfg.model)
    check_model_source(mcfg)
    if not Path(cfg.data).exists() and cfg.data.endswith((".jsonl", ".json", ".parquet", ".csv")):
        raise FileNotFoundError(f"--data '{cfg.data}' does not exist (make one with `rlkit make-data arithmetic DIR`)")
    acc = Accelerator()
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(mcfg)
    batches = _message_batches(cfg, tokenizer) if cfg.messages_column else _pair_batches(cfg, tokenizer)
    model = load_causal_lm(mcfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    per_rank = max(1, cfg.batch_size // acc.num_processes)
    progress = Progress(cfg.steps, enabled=acc.is_main_process)
    for step in range(cfg.steps):
        micro = batches(step * cfg.batch_size + acc.process_index * per_rank, per_rank)
        total = 0.0
        for prompt_ids, ids, mask in micro:
            with acc.autocast():
                logprobs, _ = token_logprobs(model, prompt_ids, ids, mask, pad_id=tokenizer.pad_token_id)  # [n, T]
            total = total - (logprobs * mask.to(logprobs.device)).sum()
        loss = total / max(1, sum(int(mask.sum()) for _, _, mask in micro))    # mean over the step's target tokens
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(step + 1, {"loss": loss.item()})
    progress.close()
    out = Path(cfg.output)
    acc.wait_for_everyone()
    if acc.is_main_process:
        acc.unwrap_model(model).save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        log.info("SFT model written to %s", out)
    acc.wait_for_everyone()
    return out
