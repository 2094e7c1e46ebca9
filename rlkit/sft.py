"""``rlkit sft``: supervised warm start on (prompt, answer) pairs -- cross-entropy on the answer tokens + EOS.

RL needs a policy that sometimes succeeds; a randomly initialised or off-task model gives all-zero rewards and
therefore zero GRPO advantages. ``rlkit sft`` teaches the answer format (and some skill) first. It uses the same
data loading, chat templates and accelerate set-up as ``rlkit train``, and writes a Hugging Face checkpoint that a
recipe's ``model.name_or_path`` can point at.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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


def _targets(tokenizer, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer token ids + EOS, right-padded: ids [n, T] long, mask [n, T] bool."""
    seqs = [tokenizer(str(a), add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for a in answers]
    return right_pad(seqs, tokenizer.pad_token_id)                                         # [n, T], [n, T]


def run_sft(cfg: SFTConfig) -> Path:
    mcfg = ModelConfig(name_or_path=cfg.model)
    check_model_source(mcfg)
    if not Path(cfg.data).exists() and cfg.data.endswith((".jsonl", ".json", ".parquet", ".csv")):
        raise FileNotFoundError(f"--data '{cfg.data}' does not exist (make one with `rlkit make-data arithmetic DIR`)")
    acc = Accelerator()
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(mcfg)
    dataset = load_prompt_dataset(cfg.data, prompt_column=cfg.prompt_column)
    if cfg.answer_column not in dataset.column_names:
        raise ValueError(f"answer column '{cfg.answer_column}' not in {cfg.data} (columns: {dataset.column_names})")
    source = PromptSource(dataset, tokenizer, prompt_column=cfg.prompt_column, chat_template=cfg.chat_template,
                          seed=cfg.seed)
    model = load_causal_lm(mcfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    per_rank = max(1, cfg.batch_size // acc.num_processes)
    progress = Progress(cfg.steps, enabled=acc.is_main_process)
    for step in range(cfg.steps):
        items = source.batch(step * cfg.batch_size + acc.process_index * per_rank, per_rank)
        ids, mask = _targets(tokenizer, [it.columns[cfg.answer_column] for it in items])
        with acc.autocast():
            logprobs, _ = token_logprobs(model, [it.prompt_ids for it in items], ids, mask,
                                         pad_id=tokenizer.pad_token_id)                       # [n, T]
        loss = -(logprobs * mask.to(logprobs.device)).sum() / mask.sum().clamp(min=1)
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
