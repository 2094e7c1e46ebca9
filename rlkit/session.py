"""Everything a run needs, built from a recipe: models, tokenizer, data, rewards, plug-ins, optimizer, engine.

``check_recipe`` does every check that needs no model (so bad input fails before anything heavy loads);
``build_session`` then loads models and wires the pieces. The trainer only runs the loop over a Session.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from rlkit.build import Plugins, build_engine, build_plugins, check_engine, model_token_bound
from rlkit.config import RecipeConfig
from rlkit.critic import Critic, NoCritic, build_critic
from rlkit.dist import gather_lists
from rlkit.environments.render import ChatRenderer
from rlkit.environments.runner import EpisodeRunner
from rlkit.data import PromptSource, format_prompts, is_local_source, load_prompt_dataset
from rlkit.evaluation import Evaluator
from rlkit.forward import ForwardSpec
from rlkit.grad_probe import sequence_grad_norms
from rlkit.lora import AdapterDisabledReference
from rlkit.modeling import check_model_source, load_causal_lm, load_tokenizer
from rlkit.rewards import RewardManager, RewardSpec
from rlkit.rollout import SamplingParams
from rlkit.rollout.canary import Canary, make_probe
from rlkit.samplers.base import SamplerTools
from rlkit.scoring import Scorer
from rlkit.update import Updater, UpdateSchedule

log = logging.getLogger("rlkit")


@dataclass
class Session:
    """One run's services, built once by :func:`build_session`; the trainer's orchestrating functions take it."""

    cfg: RecipeConfig
    accelerator: Any
    model: Any                 # prepared (DDP-wrapped when distributed); the same module as updater.model
    tokenizer: Any
    engine: Any                # rlkit.rollout.RolloutEngine
    plugins: Plugins
    rewards: RewardManager
    train_prompts: PromptSource
    sampling: SamplingParams
    canary: Canary                       # weight-sync check: the engine's log-probs of a probe = the policy's
    spec: ForwardSpec                    # how every forward pass runs (scoring, update, critic, gradient probe)
    scorer: Scorer                       # the scoring pass: old/ref log-probs, entropy, values, as plug-ins need
    updater: Updater                     # optimizer, scheduler, losses, critic: what trains on a batch
    evaluator: Evaluator                 # held-out evaluation (no prompts without data.eval)
    runner: EpisodeRunner | None = None  # multi-turn environments (None: single-turn completions)

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def critic(self) -> Critic | NoCritic:
        return self.updater.critic

    @property
    def ref_model(self):
        """The frozen reference the KL terms compare with (None when no plug-in needs ref_logprobs)."""
        return self.scorer.ref_model


def reward_manager(cfg: RecipeConfig, environment=None) -> RewardManager:
    """The recipe's reward functions, plus the environment's own episode reward (weight 1) when it has one."""
    specs = [RewardSpec(name=f.name, weight=f.weight, kwargs=f.kwargs) for f in cfg.reward.functions]
    own = getattr(environment, "reward_name", None)
    if not specs and own is None:
        raise ValueError("reward.functions is empty and the environment "
                         f"'{cfg.environment.name}' has no reward of its own (get_reward): add at least one reward "
                         "function under reward.functions (e.g. `- name: exact_match`)")
    extra = {"allow_empty": True, "external_names": [own]} if own else {}
    return RewardManager(specs, timeout_s=cfg.reward.timeout_s, failure_value=cfg.reward.failure_value,
                         answer_column=cfg.data.answer_column, executor=cfg.reward.executor, **extra)


def check_environment(cfg: RecipeConfig, environment) -> None:
    """A multi-turn environment needs a chat template that renders its tools and tool messages (tokenizer only)."""
    if not environment.multi_turn:
        return
    tokenizer = load_tokenizer(cfg.model)
    ChatRenderer(tokenizer, environment.tool_schemas()).check({"role": "tool", "name": "probe", "content": "1"})


def check_recipe(cfg: RecipeConfig, *, check_files: bool = True) -> tuple[Plugins, RewardManager]:
    """Every model-free check: plug-ins build, rewards load with valid signatures, files exist, and a multi-turn
    environment's tools render with the chat template (which loads the tokenizer, not the model)."""
    plugins = build_plugins(cfg)
    needs = plugins.requires()
    if "values" in needs and cfg.critic is None:
        users = [f"{k} '{p.plugin_name}'" for k, p in plugins.all().items() if "values" in p.requires]
        raise ValueError(f"{', '.join(users)} needs critic values, but the recipe has no critic: add a `critic:` "
                         "section (e.g. `critic: {lr: 1.0e-5}`; critic.model defaults to model.name_or_path)")
    if cfg.critic is not None and "values" not in needs:
        log.warning("critic configured but no plug-in uses values (advantage: gae, loss: value); it will be "
                    "trained for nothing -- remove the `critic:` section")
    for loss in plugins.losses:
        intended = getattr(loss, "intended_aggregation", None)
        if intended and plugins.aggregation.plugin_name != intended:
            log.warning("loss '%s' is defined with aggregation '%s' (see its docstring: `rlkit list loss`), but the "
                        "recipe aggregates with '%s'; set `aggregation: %s` unless the change is deliberate",
                        loss.plugin_name, intended, plugins.aggregation.plugin_name, intended)
    check_engine(cfg)
    rewards = reward_manager(cfg, plugins.environment)
    if check_files:
        check_model_source(cfg.model)
        check_environment(cfg, plugins.environment)
        for name in ("train", "eval"):
            source = getattr(cfg.data, name)
            if source and is_local_source(source) and not Path(source).exists():
                raise FileNotFoundError(f"data.{name} '{source}' does not exist. Generate the synthetic task with "
                                        f"`rlkit make-data arithmetic DIR` or point data.{name} at a "
                                        f".jsonl/.parquet file or a hub dataset name.")
    return plugins, rewards


def prompt_source(cfg: RecipeConfig, tokenizer, rewards: RewardManager, source: str, split: str,
                   shuffle: bool, config: str | None = None) -> PromptSource:
    d = cfg.data
    dataset = load_prompt_dataset(source, split=split, config=config,
                                  prompt_column=None if d.prompt_template else d.prompt_column)
    dataset = format_prompts(dataset, d.prompt_column, d.prompt_template, d.system_prompt)
    rewards.check_columns(c for c in dataset.column_names if c != cfg.data.prompt_column)
    return PromptSource(dataset, tokenizer, prompt_column=cfg.data.prompt_column, chat_template=cfg.data.chat_template,
                        max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.train.seed, shuffle=shuffle)


def sampler_tools(accelerator, policy, spec: ForwardSpec) -> SamplerTools:
    """What samplers may ask of the trainer's side: gradient norms of the current policy (GVM), a gather (VADE)."""
    def grad_norms(prompt_ids: list[list[int]], responses: list[list[int]], pattern: str,
                   masks: list[list[bool]] | None = None) -> torch.Tensor:
        return sequence_grad_norms(policy, prompt_ids, responses, pattern=pattern, pad_id=spec.pad_id,
                                   temperature=spec.temperature, autocast=spec.autocast, masks=masks)
    return SamplerTools(grad_norms=grad_norms, gather=partial(gather_lists, accelerator),
                        process_index=accelerator.process_index)


def optimizer_and_schedule(cfg: RecipeConfig, model) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters (LoRA: the adapters) and the LR schedule over every optimizer step."""
    t = cfg.train
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                  betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay)
    total_updates = t.steps * t.epochs * t.mini_batches
    return optimizer, get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps,
                                    num_training_steps=total_updates)


def check_engine_fits(cfg: RecipeConfig, engine, plugins: Plugins) -> None:
    """Asynchronous rollouts need an engine and a sampler that allow them (checks that need the built engine)."""
    r = cfg.rollout
    if r.max_staleness and (not engine.owns_weights or engine.releases_memory):
        raise ValueError(f"rollout.max_staleness={r.max_staleness} needs an engine that keeps its own copy of the "
                         f"weights and stays awake during training; '{r.engine.name}' "
                         + ("samples from the training module itself" if not engine.owns_weights else
                            "sleeps to give training its memory (set rollout.engine.enable_sleep_mode=false)")
                         + ". Use rollout.engine=vllm or rollout.max_staleness=0.")
    if r.partial_rollouts and not (r.max_staleness and engine.syncs_while_generating):
        raise ValueError("rollout.partial_rollouts=true needs rollout.max_staleness >= 1 (got "
                         f"{r.max_staleness}) and an engine that updates weights while it generates (vllm_server; "
                         f"'{r.engine.name}' does not). Set rollout.partial_rollouts=false or use vllm_server.")
    if r.max_staleness and plugins.sampler.reads_policy:
        raise ValueError(f"rollout.max_staleness={r.max_staleness} with sampler '{cfg.sampler.name}': this sampler "
                         "reads the live policy while it chooses (gvm's gradient probe), which would race with the "
                         "optimizer updating it during background generation. Use rollout.max_staleness=0 with it.")


def update_schedule(cfg: RecipeConfig, environment) -> UpdateSchedule:
    t = cfg.train
    return UpdateSchedule(epochs=t.epochs, mini_batches=t.mini_batches, seed=t.seed, max_grad_norm=t.max_grad_norm,
                          max_len=model_token_bound(cfg, environment), max_nan_steps=t.max_nan_steps)


def build_session(cfg: RecipeConfig, accelerator) -> Session:
    plugins, rewards = check_recipe(cfg)
    world = accelerator.num_processes
    if cfg.train.prompts_per_step % world:
        raise ValueError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the number of "
                         f"processes ({world}) so that every group stays on one process")
    needs = plugins.requires()
    if cfg.train.epochs > 1 or cfg.train.mini_batches > 1:
        needs.add("old_logprobs")  # the policy moves between optimizer steps of one batch
    tokenizer = load_tokenizer(cfg.model)
    d = cfg.data
    train_prompts = prompt_source(cfg, tokenizer, rewards, d.train, d.train_split, d.shuffle, d.train_config)
    eval_prompts = []
    if cfg.data.eval:
        src = prompt_source(cfg, tokenizer, rewards, d.eval, d.eval_split, shuffle=False,
                            config=d.eval_config or (d.train_config if d.eval == d.train else None))
        # the same first eval.max_prompts rows at every evaluation, so evaluations over a run are comparable
        eval_prompts = [src.item(i) for i in range(min(len(src), cfg.eval.max_prompts))]
    model = load_causal_lm(cfg.model)
    ref_model = None   # LoRA: the reference is the policy with its adapter disabled (set below), no second model
    if "ref_logprobs" in needs and cfg.model.lora is None:
        ref_model = load_causal_lm(cfg.model, trainable=False).to(accelerator.device)
    # one prepare call: DDP/FSDP wrap (and FSDP shards) the model and the optimizer is re-pointed at what they made
    model, optimizer, scheduler = accelerator.prepare(model, *optimizer_and_schedule(cfg, model))
    policy = accelerator.unwrap_model(model)
    if "ref_logprobs" in needs and cfg.model.lora is not None:
        ref_model = AdapterDisabledReference(policy)
    critic = build_critic(cfg, accelerator, policy) if cfg.critic is not None else NoCritic()
    # a colocated engine (hf) samples from the unwrapped policy itself; the others load model_path and get synced
    engine = build_engine(cfg, model=policy, tokenizer=tokenizer, accelerator=accelerator,
                          model_path=cfg.model.name_or_path, max_len=cfg.rollout.max_new_tokens, seed=cfg.train.seed,
                          lora=cfg.model.lora)
    check_engine_fits(cfg, engine, plugins)
    r = cfg.rollout
    sampling = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, r.top_k)
    spec = ForwardSpec.from_train(cfg.train, pad_id=tokenizer.pad_token_id, temperature=r.temperature, model=policy,
                                  autocast=accelerator.autocast)   # pack_sequences resolved here, once
    updater = Updater(accelerator, model, spec, optimizer, scheduler, plugins.losses, plugins.aggregation,
                      update_schedule(cfg, plugins.environment), critic=critic)
    plugins.sampler.bind(sampler_tools(accelerator, policy, spec))
    runner = EpisodeRunner(plugins.environment, tokenizer) if plugins.environment.multi_turn else None
    # the probe is built from the first training prompt, so the canary compares log-probs on realistic text
    canary = Canary(make_probe(tokenizer, train_prompts.item(0).prompt_ids), pad_id=spec.pad_id,
                    every=r.canary_every, tolerance=r.canary_tolerance)
    scorer = Scorer(frozenset(needs), spec, model, policy, ref_model, critic)
    eval_sampling = SamplingParams(cfg.eval.max_new_tokens or r.max_new_tokens, cfg.eval.temperature, r.top_p, r.top_k)
    evaluator = Evaluator(accelerator, engine, eval_prompts, rewards, tokenizer, eval_sampling, cfg.train.seed, runner)
    return Session(cfg, accelerator, model, tokenizer, engine, plugins, rewards, train_prompts, sampling, canary,
                   spec, scorer, updater, evaluator, runner)
