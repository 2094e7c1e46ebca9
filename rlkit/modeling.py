"""Loading the policy, reference model and tokenizer with ``from_pretrained`` (local directory or hub id)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.config import ModelConfig

log = logging.getLogger("rlkit")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_source(cfg: ModelConfig) -> None:
    """Fail early (before loading anything) when a local-looking model path does not exist."""
    src = cfg.name_or_path
    looks_local = src.startswith((".", "/", "~")) or Path(src).exists() or src.count("/") != 1
    if looks_local and not Path(src).expanduser().is_dir():
        raise FileNotFoundError(
            f"model.name_or_path '{src}' is not a directory. Build a local test model with "
            f"`rlkit tiny-model {src}`, train one with `rlkit sft`, or give a hub id like Qwen/Qwen2.5-0.5B.")


def load_tokenizer(cfg: ModelConfig):
    try:
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                            trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise OSError(f"could not load the tokenizer of model.name_or_path '{cfg.name_or_path}': {exc}") from exc
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer of '{cfg.name_or_path}' has neither pad nor eos token; add one")
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token; using eos '%s' for padding", tok.eos_token)
    return tok


def load_causal_lm(cfg: ModelConfig, *, trainable: bool = True):
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                     dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise OSError(f"could not load model.name_or_path '{cfg.name_or_path}': {exc}") from exc
    if trainable:
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if cfg.lora is not None:   # only the adapters train (rlkit/lora.py)
            from rlkit.lora import apply_lora
            model = apply_lora(model, cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model
