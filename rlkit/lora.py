"""LoRA through peft: low-rank adapters on the policy, the reference policy for free, weight sync and export.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) freezes every
weight ``W [out, in]`` of a target Linear and trains a low-rank update::

    W' = W + (alpha / r) * B @ A          A: [r, in] (random init), B: [out, r] (zero init, so W' = W at step 0)

``model.lora`` (``rlkit.config.LoRAConfig``) turns it on; peft's ``LoraConfig``/``get_peft_model`` inject the
adapters and only ``lora_A``/``lora_B`` require grad (the optimizer takes only parameters that require grad).

What this module adds around peft:

* **Reference policy without a second model**: the frozen base weights *are* the initial policy, so
  ``pi_ref(y|x)`` is the policy's own forward under ``peft_model.disable_adapter()``
  (:class:`AdapterDisabledReference`).
* **Merged weight sync** (:func:`merged_state`): Hugging Face-named full weights ``W + (alpha/r) B @ A``,
  computed out of place in float32 and cast once to the base dtype. peft's ``merge_adapter``/``unmerge_adapter``
  would add and subtract the delta in place every step, which drifts the base weights in bf16/fp16.
  ``rollout.weights.sync_state`` calls it for peft models, so the colocated vLLM engine and remote rollout
  servers both receive plain checkpoint-format weights.
* **Adapter weight sync** (:class:`AdapterSync`): a colocated vLLM engine started with ``enable_lora`` gets only
  the adapter, saved in peft format to a temporary directory and served as a versioned ``LoRARequest``
  (``rlkit-v<version>``, id = version); the previous adapter is removed from the engine.
* **Export** (``rlkit.lora_export.export_merged``, ``rlkit export RUN_DIR``): merge a run's adapter into a full checkpoint.

Deviation from the paper: none in the maths; dropout (``model.lora.dropout``) is peft's dropout on the adapter's
input, off by default so that the training forward equals the scoring/rollout forward.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("rlkit")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vllm.config.lora.MaxLoRARanks (vLLM 0.32)
_UNSERVED_BY_VLLM_LORA = ("lm_head", "embed_tokens")        # auto sync falls back to merged for these


def _unwrap(model: Any) -> Any:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def is_peft(model: Any) -> bool:
    """True for a ``peft.PeftModel``, DDP-wrapped or not (cheap: a model can only be one if peft was imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(_unwrap(model), peft.PeftModel)


def apply_lora(model, lora, *, gradient_checkpointing: bool = False):
    """Wrap a Hugging Face causal LM in peft LoRA adapters; only ``lora_A``/``lora_B`` require grad."""
    from peft import LoraConfig, get_peft_model
    if gradient_checkpointing:
        # frozen embeddings give checkpointed blocks inputs without grad; re-entrant checkpointing would then
        # drop the adapters' gradients. This makes the embedding output require grad (peft's own recipe).
        model.enable_input_require_grads()
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"model.lora.target_modules={lora.target_modules!r} does not fit this model ({exc}). "
                         f"Its Linear layers are named: {', '.join(names)}; or use 'all-linear'.") from exc
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d alpha=%g on %s: %s trainable of %s parameters (%.2f%%)", lora.r, lora.alpha,
             lora.target_modules, f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))
    return peft_model


# ---------------------------------------------------------------------------------------------- reference
class AdapterDisabledReference:
    """pi_ref = the frozen base weights: the policy's forward with its adapter switched off, no grad, eval mode.

    Stands in for a reference model wherever one is called (``model(...)``, ``next(model.parameters())``,
    ``model.eval()``/``model.train()``); eval/train are no-ops here so that switching the reference's mode never
    changes the policy's training mode. Give it the unwrapped policy (not the DDP wrapper): a no-grad forward of
    the inner module needs no collective.
    """

    training = False

    def __init__(self, policy):
        if not is_peft(policy):
            raise TypeError(f"AdapterDisabledReference needs a peft model, got {type(policy).__name__}")
        self.policy = policy

    def __call__(self, *args, **kwargs):
        mode = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(mode)

    def parameters(self):
        return self.policy.parameters()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self


# ---------------------------------------------------------------------------------------------- merged sync
def _lora_delta(layer, weight: torch.Tensor) -> torch.Tensor:
    """float32 sum over active adapters of (alpha/r) * B @ A, shaped like ``weight``."""
    from peft.tuners.lora import Linear as LoraLinear
    delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)        # [out, in]
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if isinstance(layer, LoraLinear) and not layer.use_dora.get(name, False):
            a = layer.lora_A[name].weight.detach().float()                              # [r, in]
            b = layer.lora_B[name].weight.detach().float()                              # [out, r]
            d = (b @ a) * layer.scaling[name]                                           # [out, in]
            delta += d.T if layer.fan_in_fan_out else d                                  # Conv1D stores [in, out]
        else:   # embeddings / conv adapters: peft's own (out-of-place) delta
            delta += layer.get_delta_weight(name).detach().float().reshape(weight.shape)
    return delta


def merged_state(model) -> dict[str, torch.Tensor]:
    """Full weights of a peft model under the base model's own state-dict names, with W + (alpha/r) B @ A.

    Out of place (the policy's tensors are not modified), accumulated in float32, cast once to the base dtype.
    Names match ``base_model.state_dict()`` exactly (e.g. ``model.layers.0.self_attn.q_proj.weight``), tied
    duplicates included (see ``rollout.weights.sync_state``)."""
    from peft.tuners.lora import LoraLayer
    from torch.distributed.tensor import DTensor
    hf = _unwrap(model).get_base_model()
    if any(isinstance(p, DTensor) for p in hf.parameters()):
        raise NotImplementedError("model.lora with a sharded policy (FSDP2) is not supported yet: the merged weight "
                                  "sync needs full tensors. Train LoRA with DDP (launch/ddp.yaml); the adapters "
                                  "and their optimizer states are small")
    layers, adapter_keys = {}, set()
    for name, module in hf.named_modules():
        if isinstance(module, LoraLayer):
            layers[f"{name}.base_layer.weight"] = module
            adapter_keys |= {f"{name}.{k}" for k in module.state_dict() if not k.startswith("base_layer.")}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in hf.state_dict().items():
        if key in adapter_keys:
            continue
        layer = layers.get(key)
        if layer is not None and not layer.disable_adapters and not layer.merged:
            tensor = (tensor.detach().float() + _lora_delta(layer, tensor)).to(tensor.dtype)   # [out, in]
        out[key.replace(".base_layer.", ".")] = tensor.detach()
    return out


# ---------------------------------------------------------------------------------------------- adapter sync
def vllm_max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds an adapter of rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"model.lora.r={r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}: lower "
                     "model.lora.r or set model.lora.sync=merged (full weights, any rank)")


def use_adapter_sync(lora) -> bool:
    """Resolve ``model.lora.sync`` for a colocated vLLM engine: True = serve the adapter with vLLM LoRA."""
    if lora is None or lora.sync == "merged":
        return False
    targets = [] if lora.target_modules == "all-linear" else list(lora.target_modules)
    unserved = [t for t in targets if t.rsplit(".", 1)[-1] in _UNSERVED_BY_VLLM_LORA]
    if unserved and lora.sync == "auto":
        log.info("model.lora.sync=auto -> merged: vLLM LoRA does not serve adapters on %s", unserved)
        return False
    if unserved:
        raise ValueError(f"model.lora.sync=adapter, but vLLM LoRA does not serve adapters on {unserved} "
                         "(model.lora.target_modules): set model.lora.sync to merged or auto, or drop those modules")
    log.info("model.lora.sync=%s -> adapter (vLLM LoRA, max_lora_rank=%d)", lora.sync, vllm_max_lora_rank(lora.r))
    return True


class AdapterSync:
    """Pushes the policy's adapter to a vLLM engine started with ``enable_lora``, one version at a time.

    Each push saves the adapter in peft format to ``<tmp>/v<version>``, registers
    ``LoRARequest("rlkit-v<version>", version, path)`` with the engine, then removes the previous adapter (from
    the engine and the disk), so only the current one is loaded. ``request`` is what generate/probe must pass."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="rlkit-lora-"))
        self.request = None

    def push(self, llm, model, version: int) -> int:
        """Save and load adapter ``version`` (>= 1) into ``llm``; returns the adapter's size in bytes."""
        from vllm.lora.request import LoRARequest
        path = self.dir / f"v{version}"
        model.save_pretrained(str(path), safe_serialization=True)
        request = LoRARequest(f"rlkit-v{version}", version, str(path))
        if not llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused LoRA adapter {path} (version {version})")
        old, self.request = self.request, request
        if old is not None:
            llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        return sum(f.stat().st_size for f in path.iterdir())

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
