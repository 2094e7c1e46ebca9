"""``rlkit export RUN_DIR``: merge a LoRA run's adapter (``RUN_DIR/final`` or a checkpoint) into a full Hugging Face
checkpoint, loadable with ``AutoModelForCausalLM.from_pretrained``. Its own module: it loads models
(``rlkit.modeling``), which load adapters (``rlkit.lora``); in ``lora`` it closed an import cycle."""

from __future__ import annotations

import json
from pathlib import Path

from rlkit.checkpoint import list_checkpoints
from rlkit.config import load_config
from rlkit.lora import apply_lora, merged_state
from rlkit.modeling import DTYPES


def _run_config(run: Path):
    path = run / "config.yaml"
    return load_config(path) if path.is_file() else None


def _base_path(run: Path, cfg, adapter_dir: Path | None, base: str | None) -> str:
    if base is None and cfg is not None:
        base = cfg.model.name_or_path
    if base is None and adapter_dir is not None:
        base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise FileNotFoundError(f"no base model for run '{run}': it has no config.yaml; pass --base MODEL")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().is_dir():
        raise FileNotFoundError(f"base model '{base}' (model.name_or_path of {run / 'config.yaml'}) is not a "
                                "directory; run from the directory the run was launched in, or pass --base MODEL")
    return base


def _lora_source(run: Path, cfg, checkpoint: str | None) -> tuple[Path | None, Path | None]:
    """(adapter dir in peft format, or None) and (accelerate checkpoint dir, or None) to export from."""
    if checkpoint is not None:
        if cfg is None or cfg.model.lora is None:
            raise ValueError(f"--checkpoint needs a LoRA run directory with config.yaml; '{run}' has "
                             + ("no config.yaml" if cfg is None else "no model.lora (full fine-tuning)"))
        if checkpoint == "latest":
            found = list_checkpoints(run)
            if not found:
                raise FileNotFoundError(f"run directory '{run}' has no checkpoints under {run / 'checkpoints'}")
            return None, found[-1]
        path = Path(checkpoint)
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"checkpoint '{path}' has no model.safetensors (expected a directory like "
                                    f"{run / 'checkpoints' / 'step_000010'})")
        return None, path
    final = run / "final"
    if (final / "adapter_config.json").is_file():
        return final, None
    if (final / "config.json").is_file():
        raise ValueError(f"run '{run}' was trained without LoRA (full fine-tuning): '{final}' already is a full "
                         "Hugging Face checkpoint; load it with AutoModelForCausalLM.from_pretrained, nothing to merge")
    raise FileNotFoundError(f"'{final}' has no adapter_config.json (did the run finish?); export a checkpoint "
                            "with --checkpoint latest")


def export_merged(run_dir: str | Path, output: str | Path | None = None, *, checkpoint: str | None = None,
                  base: str | None = None) -> Path:
    """Merge the adapter of a LoRA run (``RUN_DIR/final``, or a checkpoint) into a full Hugging Face checkpoint
    at ``output`` (default ``RUN_DIR/merged``), loadable with ``AutoModelForCausalLM.from_pretrained``."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory '{run}' does not exist")
    cfg = _run_config(run)
    adapter_dir, ckpt = _lora_source(run, cfg, checkpoint)
    base_path = _base_path(run, cfg, adapter_dir, base)
    dtype = DTYPES[cfg.model.dtype] if cfg is not None else "auto"
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if adapter_dir is not None:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    else:
        peft_model = apply_lora(model, cfg.model.lora)
        result = peft_model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
        lost = [k for k in result.missing_keys if "lora_" in k]
        if lost:
            raise ValueError(f"checkpoint '{ckpt}' holds no LoRA weights for {lost[:3]} ...; is it from this run?")
    state = merged_state(peft_model)
    plain = peft_model.unload()                # the base modules back, adapters dropped (weights untouched)
    plain.load_state_dict(state, strict=True)
    out = Path(output) if output is not None else run / "merged"
    plain.save_pretrained(out, safe_serialization=True)
    has_tok = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
    tok_dir = adapter_dir if has_tok else base_path
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    return out
