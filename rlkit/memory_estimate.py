"""Dry-run estimate of the memory per device a recipe needs (printed by ``rlkit show``), before anything loads.

The model's shape comes from its ``config.json`` (``AutoConfig.from_pretrained``, local directory or cached hub
id); the parameter count from instantiating it on the ``meta`` device (exact, allocates nothing). Per device,
for ``world`` training processes and a sharding strategy (``none`` = DDP, ``fsdp2``, ``fsdp2_offload``,
``zero2``, ``zero3``):

=============  ==========================================================================================
policy         P * b_w                          (/ world when parameters are sharded: fsdp2, zero3; 0 offloaded)
gradients      T * b_w                          (/ world for fsdp2, zero2, zero3; 0 offloaded)
optimizer      AdamW: 2 * T * b_w (torch keeps the moments in the parameter dtype); DeepSpeed with bf16/fp16
               mixed precision keeps an fp32 master copy and fp32 moments: 12 * T   (sharded like gradients)
reference      P * b_w on every device (loaded unsharded); 0 with LoRA (the adapter is disabled instead)
critic         a second backbone (weights + grads + AdamW) unless ``critic.shared_backbone``
activations    one micro-batch of t = micro_batch_size * S tokens (also for ``train.max_tokens_per_micro: auto``;
               an int budget: that many):
               t * L * (8 H + 4 I) * b_a without gradient checkpointing (inputs saved by attention and MLP
               per layer, memory-efficient attention), t * L * H * b_a + one layer's worth with it;
               logits: t * V * 12 bytes on the full-logits path (fp32 logits, log-softmax and its gradient),
               c * V * 12 for chunked log-probs with a chunk of c tokens
vLLM           colocated engine: ``gpu_memory_utilization`` * device memory (weights + KV cache; released by
               sleep mode while the policy trains), on the rollout phase only
=============  ==========================================================================================

P = parameters, T = trainable parameters (LoRA: r * (in + out) per adapted linear layer), b_w = bytes of
``model.dtype``, b_a = 2 under bf16/fp16 autocast (else b_w), S = prompt tokens + ``rollout.max_new_tokens``,
L/H/I/V = layers, hidden, MLP width, vocabulary. Activations follow Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models") adapted to a gated MLP; they are the least certain term
(allocator fragmentation and temporary buffers add 10-30 % in practice), so the table is a sizing guide, not a
guarantee. The KV cache one step's rollouts need at once, 2 * L * kv_heads * head_dim * b_kv per token, is
printed next to the engine's budget so an undersized cache (vLLM then preempts and recomputes) shows up here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.config import RecipeConfig
from rlkit.fused_logprob import FUSED_CHUNK_ELEMENTS
from rlkit.plugins import load_builtins
from rlkit.registry import ENGINES

GIB = 2**30
SHARDINGS = ("none", "fsdp2", "fsdp2_offload", "zero2", "zero3")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_PROMPT_TOKENS = 256


@dataclass
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_heads: int
    head_dim: int
    lora_params: int = 0          # trainable parameters under the recipe's LoRA config (0 = full fine-tuning)


@dataclass
class Estimate:
    rows: list[tuple[str, float, str]] = field(default_factory=list)   # (component, bytes per device, note)
    train_bytes: float = 0.0
    rollout_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> float:
        return max(self.train_bytes, self.rollout_bytes)

    def add(self, name: str, nbytes: float, note: str, phase: str = "both") -> None:
        """One component, counted in the training phase, the rollout phase or both."""
        self.rows.append((name, nbytes, note))
        if phase in ("both", "train"):
            self.train_bytes += nbytes
        if phase in ("both", "rollout"):
            self.rollout_bytes += nbytes


@dataclass(frozen=True)
class Layout:
    """How a sharding strategy divides the training state over ``world`` devices."""

    world: int
    b_w: int                # bytes per weight (model.dtype)
    b_a: int                # bytes per activation (2 under bf16/fp16 autocast)
    shard_params: int       # divisor of the weights (fsdp2, zero3: world)
    shard_state: int        # divisor of gradients and optimizer state (fsdp2, zero2, zero3: world)
    offload: bool           # fsdp2_offload: parameters and optimizer state live in CPU RAM
    fp32_master: bool       # DeepSpeed under bf16/fp16: an fp32 master copy and fp32 moments

    @property
    def opt_per_param(self) -> int:
        """AdamW bytes per trainable parameter (torch keeps both moments in the parameter dtype)."""
        return 12 if self.fp32_master else 2 * self.b_w


def layout(cfg: RecipeConfig, sharding: str, world: int) -> Layout:
    """The :class:`Layout` of ``sharding`` (one of SHARDINGS) for ``cfg`` on ``world`` processes."""
    t, b_w = cfg.train, _DTYPE_BYTES[cfg.model.dtype]
    deepspeed_master = sharding.startswith("zero") and t.mixed_precision != "no"   # fp32 master + fp32 moments
    return Layout(world=world, b_w=b_w, b_a=2 if t.mixed_precision in ("bf16", "fp16") else b_w,
                  shard_params=world if sharding in ("fsdp2", "fsdp2_offload", "zero3") else 1,
                  shard_state=world if sharding in ("fsdp2", "fsdp2_offload", "zero2", "zero3") else 1,
                  offload=sharding == "fsdp2_offload", fp32_master=deepspeed_master)


def model_shape(cfg: RecipeConfig) -> ModelShape:
    """Shape and exact parameter count of ``model.name_or_path`` from its config (meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    m = cfg.model
    config = AutoConfig.from_pretrained(m.name_or_path, revision=m.revision, trust_remote_code=m.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=m.trust_remote_code)
    params = sum(p.numel() for p in model.parameters())            # parameters() skips tied duplicates
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    lora = getattr(m, "lora", None)
    return ModelShape(params=params, layers=text.num_hidden_layers, hidden=text.hidden_size,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                      vocab=text.vocab_size, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                      head_dim=head_dim, lora_params=lora_parameter_count(model, lora) if lora else 0)


def lora_parameter_count(model: torch.nn.Module, lora) -> int:
    """r * (in + out) summed over the linear layers LoRA adapts (``all-linear`` = every one but the LM head)."""
    targets = lora.target_modules
    out_emb = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if targets in ("all-linear", ["all-linear"]):
            hit = module is not out_emb
        else:
            names = [targets] if isinstance(targets, str) else list(targets)
            hit = name.split(".")[-1] in names
        if hit:
            total += lora.r * (module.in_features + module.out_features)
    return total


def estimate_memory(cfg: RecipeConfig, shape: ModelShape, *, world: int = 1, sharding: str = "none",
                    device_gib: float = 80.0, needs_ref: bool = False,
                    prompt_tokens: int | None = None) -> Estimate:
    """Bytes per device for each component of a run of ``cfg`` on ``world`` processes (see the module table)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding '{sharding}' is not one of {', '.join(SHARDINGS)}")
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    lay, est = layout(cfg, sharding, world), Estimate()
    S = (prompt_tokens or cfg.data.max_prompt_tokens or DEFAULT_PROMPT_TOKENS) + cfg.rollout.max_new_tokens
    _state_rows(est, cfg, shape, lay, needs_ref)
    _activation_rows(est, cfg, shape, lay, S)
    _engine_rows(est, cfg, shape, lay, S, device_gib)
    P, T = shape.params, shape.lora_params or shape.params
    if lay.offload:
        ram = P * lay.b_w / lay.shard_params + T * (lay.b_w + lay.opt_per_param) / lay.shard_state
        est.notes.append(f"CPU RAM per process for the offloaded state: {ram / GIB:.2f} GiB")
    if needs_ref and not shape.lora_params and lay.shard_params > 1:
        est.notes.append("the reference model is not sharded: with a large model use LoRA (reference = adapter "
                         "disabled) or a KL-free recipe")
    return est


def _state_rows(est: Estimate, cfg: RecipeConfig, shape: ModelShape, lay: Layout, needs_ref: bool) -> None:
    """Policy weights, gradients, AdamW state, the reference and the critic."""
    P, T, b_w, world = shape.params, shape.lora_params or shape.params, lay.b_w, lay.world
    count = f"{P / 1e9:.3g}B" if P >= 1e9 else f"{P / 1e6:.3g}M"
    where = "offloaded to CPU RAM" if lay.offload else (f"sharded over {world}" if lay.shard_params > 1
                                                         else "replicated")
    est.add("policy weights", 0 if lay.offload else P * b_w / lay.shard_params, f"{count} params x {b_w} B, {where}")
    what = f"LoRA: {T / 1e6:.3g}M trainable" if shape.lora_params else "full fine-tuning"
    est.add("gradients", 0 if lay.offload else T * b_w / lay.shard_state, f"{what}; freed between steps",
            phase="train")
    est.add("optimizer (AdamW)", 0 if lay.offload else T * lay.opt_per_param / lay.shard_state,
            f"{lay.opt_per_param} B/trainable param" + (" (fp32 master + moments)" if lay.fp32_master else "")
            + (f", sharded over {world}" if lay.shard_state > 1 else ""))
    if needs_ref:
        if shape.lora_params:
            est.add("reference model", 0, "the policy with its adapter disabled (no second model)")
        else:
            est.add("reference model", P * b_w, "frozen copy, unsharded on every device")
    if cfg.critic is not None:
        if cfg.critic.shared_backbone:
            est.add("critic", (shape.hidden + 1) * b_w * 4, "value head on the policy's backbone")
        else:
            C = P - shape.vocab * shape.hidden                           # the backbone without the LM head
            est.add("critic", 0 if lay.offload else C * b_w / lay.shard_params
                    + C * (b_w + lay.opt_per_param) / lay.shard_state, "separate backbone + head: weights, grads, AdamW")


def _activation_rows(est: Estimate, cfg: RecipeConfig, shape: ModelShape, lay: Layout, S: int) -> None:
    """One micro-batch's saved activations and the log-prob head's logits (chunked or full)."""
    t, b_a = cfg.train, lay.b_a
    budget = t.max_tokens_per_micro                                  # "auto" = micro_batch_size x the longest row
    tokens = budget if isinstance(budget, int) else t.micro_batch_size * S
    L, H, I, V = shape.layers, shape.hidden, shape.intermediate, shape.vocab
    if cfg.model.gradient_checkpointing:
        act = tokens * L * H * b_a + tokens * (8 * H + 4 * I) * b_a
        act_note = f"{tokens} tokens/micro-batch, gradient checkpointing (layer inputs + one layer)"
    else:
        act = tokens * L * (8 * H + 4 * I) * b_a
        act_note = f"{tokens} tokens/micro-batch, no gradient checkpointing"
    est.add("activations", act, act_note, phase="train")
    chunk = t.logprob_chunk_tokens
    if chunk == "auto":
        chunk = max(1, FUSED_CHUNK_ELEMENTS // V)                        # as rlkit/fused_logprob.py resolves it
    logit_tokens = min(chunk, tokens) if chunk else tokens
    est.add("logits / log-probs", logit_tokens * V * 12,
            f"chunks of {chunk} tokens" if chunk else "full [tokens, V] fp32 logits", phase="train")


def _engine_rows(est: Estimate, cfg: RecipeConfig, shape: ModelShape, lay: Layout, S: int,
                 device_gib: float) -> None:
    """What the rollout engine holds on the device, from the memory the engine declares (``device_memory``)."""
    load_builtins()
    engine = cfg.rollout.engine
    per_proc = cfg.train.prompts_per_step * cfg.rollout.n / lay.world
    b_kv = _DTYPE_BYTES.get(engine.kwargs.get("dtype", "auto"), lay.b_w)     # "auto" = the policy's dtype
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * b_kv
    kv_all = per_proc * S * kv_per_token
    held = getattr(ENGINES.get(engine.name), "device_memory", "none")
    if held == "reserved_fraction":
        frac = float(engine.kwargs.get("gpu_memory_utilization", 0.3))
        reserve = frac * device_gib * GIB
        est.add("vLLM engine", reserve, f"gpu_memory_utilization {frac} x {device_gib:g} GiB (weights + KV cache); "
                "sleeps while the policy trains", phase="rollout")
        kv_budget = reserve - shape.params * b_kv
        est.notes.append(f"KV cache for one step's {per_proc:g} completions per device: {kv_all / GIB:.2f} GiB "
                         f"({kv_per_token / 1024:.1f} KiB/token x {S} tokens); the engine's budget after its "
                         f"weights is {max(kv_budget, 0) / GIB:.2f} GiB"
                         + (" -- too small: vLLM will preempt and recompute; raise "
                            "rollout.engine.gpu_memory_utilization" if kv_all > kv_budget else ""))
    elif held == "generation_kv":
        batch = int(engine.kwargs.get("batch_size", 64))
        est.add("generation KV cache (hf)", min(batch, per_proc) * S * kv_per_token, f"{batch} sequences at a time",
                phase="rollout")
    else:
        est.notes.append(f"rollout.engine '{engine.name}' generates on other devices: no engine memory here")


def format_estimate(est: Estimate, *, world: int, sharding: str, device_gib: float):
    """A rich table of ``est``: one row per component, then the two phases and the peak."""
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=f"memory estimate per device ({world} process{'es' if world > 1 else ''}, sharding: "
                        f"{sharding}, {device_gib:g} GiB devices)")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for name, nbytes, note in est.rows:
        table.add_row(name, f"{nbytes / GIB:.2f}", escape(note))
    table.add_row("training phase", f"{est.train_bytes / GIB:.2f}", "policy state + activations")
    table.add_row("rollout phase", f"{est.rollout_bytes / GIB:.2f}", "policy state + engine")
    fits = "fits" if est.peak_bytes <= device_gib * GIB else "DOES NOT FIT"
    table.add_row("peak", f"{est.peak_bytes / GIB:.2f}", f"{fits} in {device_gib:g} GiB")
    return table
