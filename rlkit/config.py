"""Recipe schema: strict pydantic models (an unknown key is an error), YAML loading and dotted overrides.

A recipe is a YAML file; any field can be overridden on the command line with ``dotted.path=value``
(the value is parsed as YAML: ``train.steps=20``, ``advantage.scale=none``, ``losses.1.beta=0.04``).
Plug-in sections (``sampler``, ``objective``, ``advantage``, ``selection``, ``aggregation``, each entry of
``losses``, ``rollout.engine``) hold a ``name`` plus that plug-in's own options; those options are checked
against the plug-in's constructor when it is built (``rlkit validate``).
"""

from __future__ import annotations

import copy

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the bad key or value."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PluginSpec(BaseModel):
    """``name`` of a registered plug-in (or ``module:attr``) plus its options, checked at build time."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="registered name, or 'module:attr' / 'path/file.py:attr'")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LoRAConfig(Strict):
    """Low-rank adapters (LoRA, Hu et al. 2021, arXiv:2106.09685) through peft: W' = W + (alpha/r) B A, only A and
    B train. Presence of ``model.lora`` turns it on; null = full fine-tuning."""

    r: int = Field(16, gt=0, description="adapter rank r (B is [out, r], A is [r, in])")
    alpha: float = Field(32.0, gt=0, description="scale numerator: the update is (alpha / r) * B @ A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input while training "
                           "(0 keeps the training forward equal to the scoring/rollout forward)")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description="'all-linear' (every Linear except the output head) or module names, e.g. "
                                  "[q_proj, v_proj]")
    sync: Literal["auto", "adapter", "merged"] = Field(
        "auto", description="how a vLLM engine (colocated or vllm_server) gets new weights: adapter = push only "
        "the adapter (vLLM LoRA; servers need `rlkit rollout-server --lora-rank R`), merged = full W + (alpha/r) B A "
        "weights; auto = adapter where the engine supports it")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or not all(isinstance(x, str) and x for x in v)):
            raise ValueError(f"model.lora.target_modules must be 'all-linear' or a non-empty list of module names "
                             f"(e.g. [q_proj, k_proj, v_proj, o_proj]), got {v!r}")
        return v


class ModelConfig(Strict):
    name_or_path: str = Field(description="Hugging Face hub id or local directory (from_pretrained)")
    revision: str | None = Field(None, description="hub revision")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype when loaded")
    trust_remote_code: bool = Field(False, description="passed to from_pretrained")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    lora: LoRAConfig | None = Field(None, description="train low-rank adapters instead of all weights (peft); "
                                                      "null = full fine-tuning")


class DataConfig(Strict):
    train: str = Field(description="local .jsonl/.json/.parquet/.csv file or directory, or a hub dataset name")
    train_split: str = Field("train", description="split name for hub datasets")
    train_config: str | None = Field(None, description="hub dataset configuration (subset), e.g. 'main' for "
                                     "openai/gsm8k; null = the dataset's only/default one")
    eval: str | None = Field(None, description="held-out prompts (same formats); used by train.eval_*")
    eval_split: str = Field("test", description="split name for hub datasets")
    eval_config: str | None = Field(None, description="configuration of the eval dataset; null = train_config "
                                    "when eval is the same dataset as train, else its default")
    prompt_column: str = Field("prompt", description="column holding the prompt text or chat messages")
    prompt_template: str | None = Field(None, description="build the prompt from the columns before the chat "
                                        "template, e.g. '{question}\\nPut the final answer after ####.' (str.format)")
    system_prompt: str | None = Field(None, description="a system message opening every prompt (makes prompts "
                                      "chat messages)")
    answer_column: str = Field("answer", description="column passed to verl-style rewards as ground_truth")
    chat_template: Literal["auto"] | bool = Field("auto", description="auto = apply when the tokenizer has one")
    max_prompt_tokens: int | None = Field(None, gt=0, description="drop prompts longer than this")
    shuffle: bool = Field(True, description="reshuffle the prompt order every epoch (seeded)")


class RolloutConfig(Strict):
    engine: PluginSpec = Field(default_factory=lambda: PluginSpec(name="hf"), description="rollout engine")
    n: int = Field(8, ge=1, description="completions per prompt (group size) for the fixed sampler")
    max_new_tokens: int = Field(256, ge=1, description="generation length cap; longer = finish reason 'length'")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    top_k: int = Field(0, ge=0, description="top-k sampling; 0 = off")
    max_staleness: int = Field(0, ge=0, description="k > 0 = generate the batches of later steps while a step "
                               "trains: step s trains on a batch from policy version max(0, s - k), exactly "
                               "(rlkit/rollout/prefetch.py); needs an engine with its own weights, e.g. vllm; "
                               "0 = synchronous")
    partial_rollouts: bool = Field(False, description="with max_staleness >= 1: a weight update does not wait for "
                                   "the generation in flight (vLLM pause keep); a request spanning it keeps its tokens, "
                                   "each tagged with the version that sampled it (needs vllm_server; not reproducible "
                                   "run to run)")
    canary_every: int = Field(1, ge=0, description="check every k-th weight sync with the probe canary (0 = off)")
    canary_tolerance: float | None = Field(None, gt=0, description="mean |logprob diff| allowed; default by dtype "
                                           "(fp32 1e-3, bf16 5e-2)")

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class RewardFnConfig(Strict):
    name: str = Field(description="built-in reward name, 'module:attr' or 'path/file.py:attr'")
    weight: float = Field(1.0, description="weight in the summed reward")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the function")


class RewardConfig(Strict):
    functions: list[RewardFnConfig] = Field(
        default_factory=list, description="reward functions, summed with weights; may be empty only when the "
        "environment scores its episodes itself (a TRL-style environment class with get_reward)")
    timeout_s: float = Field(30.0, gt=0, description="per call; a timed-out sample gets failure_value")
    failure_value: float = Field(0.0, description="reward given to a sample whose reward function failed")
    executor: Literal["auto", "process", "thread"] = Field(
        "auto", description="where reward calls run: process = a killable worker process (rlkit.sandbox; a hung "
        "call is killed at timeout_s), thread = a daemon thread in the trainer (for rewards holding a model or "
        "other state that cannot cross a process boundary; a hung call leaks its thread). auto = process for "
        "plain importable functions, thread for callable objects and functions with bound state")


class TrainConfig(Strict):
    output_dir: str = Field("runs/rlkit", description="run directory: metrics, checkpoints, plots")
    steps: int = Field(100, ge=1, description="RL steps (one rollout batch each)")
    prompts_per_step: int = Field(16, ge=1, description="prompts per step, over all processes")
    epochs: int = Field(1, ge=1, description="PPO epochs over each rollout batch")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per epoch (the batch is split in this many)")
    micro_batch_size: int = Field(8, ge=1, description="completions per forward/backward per process")
    max_tokens_per_micro: Literal["auto"] | int | None = Field(
        "auto", description="token budget per micro-batch (prompt + response tokens per process) in the update "
        "and the scoring passes. auto = micro_batch_size x the longest sequence of the rows being split: never more "
        "tokens than the fixed micro-batches' widest (the same peak memory), but many short rows share a "
        "micro-batch when lengths are long-tailed. An int = that budget (a longer sequence goes alone, warned "
        "once); null = fixed micro-batches of micro_batch_size consecutive rows. The loss is unchanged (global plan)")
    pack_sequences: Literal["auto"] | bool = Field(
        "auto", description="with max_tokens_per_micro: true = each micro-batch is one padding-free row (position "
        "ids restart per sequence, block-diagonal attention; transformers >= 4.56), false = right-padded rows "
        "sorted by length, rows x longest <= budget (verl's dynamic batch size). auto = pack when the model's "
        "attention implementation skips masked blocks (flash_attention_2/3, flex_attention), else padded: sdpa and "
        "eager compute the dense [L, L] attention of a packed row (benchmarks/packing.py)")
    logprob_chunk_tokens: Literal["auto"] | int | None = Field(
        "auto", description="response positions per LM-head chunk when computing log-probs/entropy (update and "
        "scoring passes): the [tokens, V] logits never exist in full, backward recomputes each chunk. 'auto' = "
        "2**26 // vocab positions (256 MiB per fp32 chunk buffer; 447 for a 150k vocabulary); 0 or null = full logits [n, S, V]. Models whose "
        "logits are not a plain linear head (soft-capping, logit scales) use full logits automatically")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = Field(0, ge=0, description="warm-up in optimizer steps")
    max_grad_norm: float | None = Field(1.0, description="gradient clipping; null = off")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast via accelerate: with model.dtype float32 the parameters (master weights), "
        "their gradients and AdamW's state stay fp32 while the forward/backward matmuls run in bf16/fp16; "
        "log-softmax is always taken in fp32")
    seed: int = 0
    resume: str = Field("auto", description="'auto' = latest checkpoint in output_dir, 'never', or a path")
    save_every: int = Field(0, ge=0, description="checkpoint every k steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    log_every: int = Field(1, ge=1)
    sample_every: int = Field(10, ge=0, description="print/write a table of completions every k steps (0 = off)")
    eval_every: int = Field(0, ge=0, description="held-out eval every k steps (0 = off)")
    eval_at_start: bool = Field(False, description="held-out eval before the first step")
    eval_at_end: bool = Field(True, description="held-out eval after the last step (needs data.eval)")
    max_nan_steps: int = Field(0, ge=0, description="consecutive non-finite losses tolerated (skipped) before stopping")
    mask_truncated: bool = Field(False, description="completions cut at rollout.max_new_tokens leave the loss "
                                                    "(TRL mask_truncated_completions; DAPO overlong filtering)")

    @field_validator("max_tokens_per_micro")
    @classmethod
    def _token_budget(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"train.max_tokens_per_micro must be 'auto', a token budget >= 1, or null for fixed "
                             f"micro-batches of micro_batch_size rows; got {v}")
        return v

    @field_validator("logprob_chunk_tokens")
    @classmethod
    def _chunk_tokens(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"train.logprob_chunk_tokens must be 'auto', a positive number of positions, or 0/null "
                             f"for full logits; got {v}")
        return v


class CriticConfig(Strict):
    """A value model for PPO with GAE (``advantage: gae`` and the ``value`` loss). Presence of the section turns
    the critic on."""

    model: str | None = Field(None, description="backbone for a separate value model (AutoModel + scalar head); "
                                                "null = model.name_or_path")
    shared_backbone: bool = Field(False, description="value head on the policy's own backbone instead of a "
                                                     "separate model (saves memory; value gradients reach the policy)")
    lr: float = Field(1e-5, gt=0, description="critic AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = Field(1.0, description="critic gradient clipping; null = off")
    warmup_steps: int = Field(0, ge=0, description="first RL steps that train only the critic (policy frozen)")


class EvalConfig(Strict):
    max_prompts: int = Field(500, ge=1, description="held-out prompts used by in-training evaluation")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    max_new_tokens: int | None = Field(None, description="defaults to rollout.max_new_tokens")
    batch_size: int = Field(64, ge=1)


class LoggingConfig(Strict):
    tensorboard: bool = True
    wandb: dict[str, Any] | None = Field(None, description="kwargs for wandb.init (project, name, ...); null = off")
    trackio: dict[str, Any] | None = Field(
        None, description="kwargs for trackio.init (project, name, space_id, ...; project defaults to 'rlkit', "
        "name to the run directory's name); {} = on with the defaults, null = off. pip install 'rlkit[trackio]'")


class RecipeConfig(Strict):
    model: ModelConfig
    data: DataConfig
    reward: RewardConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    critic: CriticConfig | None = Field(None, description="value model; needed by advantage: gae / loss: value")
    sampler: PluginSpec = Field(default_factory=lambda: PluginSpec(name="fixed"))
    objective: PluginSpec = Field(default_factory=lambda: PluginSpec(name="mean"))
    advantage: PluginSpec = Field(default_factory=lambda: PluginSpec(name="grpo"))
    selection: PluginSpec = Field(default_factory=lambda: PluginSpec(name="all"))
    losses: list[PluginSpec] = Field(default_factory=lambda: [PluginSpec(name="ppo_clip")],
                                     description="per-token loss terms, summed")
    aggregation: PluginSpec = Field(default_factory=lambda: PluginSpec(name="token_mean"))
    environment: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name="single_turn"),
        description="what happens between model turns: single_turn (one completion per prompt), tools "
        "(tool-calling episodes), or a TRL-style environment class 'path/file.py:MyEnv'")

    @field_validator("sampler", "objective", "advantage", "selection", "aggregation", "environment", mode="before")
    @classmethod
    def _plugin_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("losses", mode="before")
    @classmethod
    def _losses_list(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        return [{"name": x} if isinstance(x, str) else x for x in items]

    @model_validator(mode="after")
    def _cross_checks(self) -> "RecipeConfig":
        if self.train.eval_every or self.train.eval_at_start:
            if self.data.eval is None:
                raise ValueError("train.eval_every / train.eval_at_start need data.eval (a held-out prompt file)")
        return self


# ----------------------------------------------------------------------------------------------- loading


def _is_plugin_section(keys: list[str]) -> bool:
    """Whether the dotted path ``keys`` (list indices included) names a plug-in section (a :class:`PluginSpec`)."""
    model: Any = RecipeConfig
    for key in keys:
        if key.isdigit() and getattr(model, "__origin__", None) is list:
            model = model.__args__[0]
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or key not in fields:
            return False
        model = fields[key].annotation
    return model is PluginSpec or getattr(model, "__origin__", None) is list and model.__args__[0] is PluginSpec


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            index = _list_index(node, key, keys[: i + 1])
            if isinstance(node[index], str) and _is_plugin_section(keys[: i + 1]):
                node[index] = {"name": node[index]}      # `losses: [ppo_clip]`, opened up
            node = node[index]
            continue
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        elif isinstance(nxt, str) and _is_plugin_section(keys[: i + 1]):
            nxt = node[key] = {"name": nxt}        # the shorthand `aggregation: token_mean`, opened up
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override '{dotted}': '{'.'.join(keys[:-1])}' is a value, not a section")


def _list_index(node: list, key: str, path: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override '{'.'.join(path)}': '{key}' is not an index of a list of {len(node)} items")
    return int(key)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form dotted.key=value (e.g. train.steps=20)")
        key, _, raw = item.partition("=")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def _field_names_at(loc: tuple) -> list[str]:
    model: Any = RecipeConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and getattr(ann, "__args__", None):
            subs = [a for a in ann.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
            model = subs[0] if subs else None
    return list(model.model_fields) if model is not None else []


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            names = _field_names_at(tuple(e["loc"]))
            hint = difflib.get_close_matches(str(e["loc"][-1]), names, n=1, cutoff=0.5)
            did = f"; did you mean '{'.'.join(str(p) for p in e['loc'][:-1] + (hint[0],))}'?" if hint else ""
            lines.append(f"  - unknown key '{loc}'{did} (valid here: {', '.join(names)})")
        elif e["type"] == "missing":
            lines.append(f"  - missing required key '{loc}'")
        else:
            lines.append(f"  - {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


PLUGIN_DEFAULTS: dict[str, Any] = {
    "sampler": {"name": "fixed"}, "objective": {"name": "mean"}, "advantage": {"name": "grpo"},
    "selection": {"name": "all"}, "aggregation": {"name": "token_mean"}, "environment": {"name": "single_turn"},
    "losses": lambda: [{"name": "ppo_clip"}],
}


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RecipeConfig:
    """Read a YAML recipe (or ``base`` dict), apply dotted overrides, validate strictly."""
    tree: dict[str, Any] = copy.deepcopy(base or {})    # overrides must not write into the caller's dicts
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe not found: '{path}' (recipes live in recipes/, e.g. recipes/quickstart.yaml)")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe '{path}' is not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"recipe '{path}' must be a mapping of sections, got {type(tree).__name__}")
    pairs = parse_overrides(overrides or [])
    for section, default in PLUGIN_DEFAULTS.items():  # so `advantage.scale=none` keeps the default name
        if any(k == section or k.startswith(section + ".") for k, _ in pairs) and section not in tree:
            tree[section] = default() if callable(default) else copy.deepcopy(default)   # not shared
    if any(k.startswith("rollout.engine.") for k, _ in pairs):
        rollout = tree.setdefault("rollout", {})
        if isinstance(rollout.get("engine"), str):
            rollout["engine"] = {"name": rollout["engine"]}
        rollout.setdefault("engine", {"name": "hf"})
    for key, value in pairs:
        _set_dotted(tree, key, value)
    try:
        return RecipeConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "(dict)"))) from None


def dump_config(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
