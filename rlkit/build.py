"""Build every plug-in of a recipe (no model needed): what ``rlkit validate`` checks and the trainer uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlkit.config import RecipeConfig
from rlkit.environments.build import build_environment
from rlkit.plugin_api import SCORING_FIELDS
from rlkit.plugins import load_builtins
from rlkit.registry import ADVANTAGES, AGGREGATIONS, ENGINES, LOSSES, OBJECTIVES, SAMPLERS, SELECTIONS


@dataclass
class Plugins:
    """The recipe's plug-ins, one per kind (losses: a list, summed per token), built and cross-checked together by
    :func:`build_plugins`; the trainer calls them only through this object, never by name."""

    sampler: Any
    objective: Any
    advantage: Any
    selection: Any
    losses: list[Any]
    aggregation: Any
    environment: Any = None
    mask_truncated: bool = False   # train.mask_truncated: completions cut at max_new_tokens leave the loss

    def select(self, batch, progress: float):
        """token_weights [N, T] and metrics of the selection plug-in; with ``mask_truncated`` the rows cut at
        rollout.max_new_tokens get weight 0 after it (TRL's mask_truncated_completions, DAPO's overlong filter)."""
        weights, metrics = self.selection(batch, progress=progress)                         # [N, T]
        if self.mask_truncated:
            weights = weights * (~batch.truncated)[:, None]                                 # [N, T]
            metrics["truncated_masked_frac"] = batch.truncated.float().mean().item()
        return weights, metrics

    def all(self) -> dict[str, Any]:
        out = {"environment": self.environment} if self.environment is not None else {}
        out |= {"sampler": self.sampler, "objective": self.objective, "advantage": self.advantage,
                "selection": self.selection, "aggregation": self.aggregation}
        out.update({f"loss.{i}": loss for i, loss in enumerate(self.losses)})
        return out

    def check_chain(self) -> None:
        """An objective that already subtracts a baseline must not get a second one from the estimator."""
        if self.objective.output == "advantage" and not self.advantage.takes_advantages:
            raise ValueError(
                f"objective '{self.objective.plugin_name}' already returns advantages (it applies its own baseline), "
                f"so advantage '{self.advantage.plugin_name}' would subtract a second one: set `advantage: "
                "passthrough`, or give the objective `baseline: none` to feed its transformed rewards to "
                f"'{self.advantage.plugin_name}'")
        # a loss that trains on a field no estimator writes would find None there at the first update: refuse now
        for loss in self.losses:
            missing = set(loss.consumes) - set(self.advantage.outputs)
            if missing:
                raise ValueError(f"loss '{loss.plugin_name}' trains on {sorted(missing)}, which advantage "
                                 f"'{self.advantage.plugin_name}' does not produce (it writes "
                                 f"{sorted(self.advantage.outputs) or 'nothing but advantages'}): use `advantage: gae`"
                                 f" (with a `critic:` section), or drop loss '{loss.plugin_name}'")
        # pooled baselines (Reinforce-Ada's global_stats) are means of raw rewards: the estimator must read them and
        # the objective must leave the rewards as they are, or baseline and rewards would be on different scales
        if self.sampler.provides_pool_stats:
            where = f"sampler '{self.sampler.plugin_name}' measures each prompt's baseline over its whole pool"
            if not self.advantage.uses_pool_stats:
                raise ValueError(f"{where} (global_stats: true), but advantage '{self.advantage.plugin_name}' "
                                 "cannot use it: set `advantage: grpo` (scale: none for the paper's setting), or set "
                                 "`sampler.global_stats: false` to normalise within the kept group")
            if not self.objective.identity:
                raise ValueError(f"{where} from the raw rewards (global_stats: true), but objective "
                                 f"'{self.objective.plugin_name}' transforms the rewards, so the two would not match: "
                                 "use `objective: mean`, or set `sampler.global_stats: false`")

    def requires(self) -> set[str]:
        """The scoring-pass fields some plug-in requires (old_logprobs, entropy, ref_logprobs, values): the trainer
        computes exactly these, so a recipe that needs no reference model never loads one."""
        needed: set[str] = set()
        for name, plugin in self.all().items():
            unknown = set(plugin.requires) - SCORING_FIELDS
            if unknown:
                raise ValueError(f"{name} '{plugin.plugin_name}' requires {sorted(unknown)}, which the trainer "
                                 f"cannot compute (it provides {sorted(SCORING_FIELDS)})")
            needed |= set(plugin.requires)
        return needed


def build_plugins(cfg: RecipeConfig) -> Plugins:
    """Every plug-in of the recipe; ``max_len`` (the most model tokens a row can hold) comes from the environment."""
    load_builtins()
    environment = build_environment(cfg.environment.name, cfg.environment.kwargs)
    ctx = {"max_len": model_token_bound(cfg, environment), "total_steps": cfg.train.steps,
           "group_size": cfg.rollout.n, "seed": cfg.train.seed}
    plugins = Plugins(environment=environment,
        sampler=SAMPLERS.build(cfg.sampler.name, cfg.sampler.kwargs, **ctx),
        objective=OBJECTIVES.build(cfg.objective.name, cfg.objective.kwargs, **ctx),
        advantage=ADVANTAGES.build(cfg.advantage.name, cfg.advantage.kwargs, **ctx),
        selection=SELECTIONS.build(cfg.selection.name, cfg.selection.kwargs, **ctx),
        losses=[LOSSES.build(s.name, s.kwargs, **ctx) for s in cfg.losses],
        aggregation=AGGREGATIONS.build(cfg.aggregation.name, cfg.aggregation.kwargs, **ctx),
        mask_truncated=cfg.train.mask_truncated,
    )
    plugins.check_chain()
    return plugins


def model_token_bound(cfg: RecipeConfig, environment) -> int:
    """Most policy-sampled tokens one row can hold: rollout.max_new_tokens, times the turns of an episode."""
    if not environment.multi_turn:
        return cfg.rollout.max_new_tokens
    return environment.max_model_tokens(cfg.rollout.max_new_tokens)


# what build_engine may pass an engine; each engine's __init__ takes the names it declares (the registry filters)
ENGINE_CONTEXT = ("model", "tokenizer", "accelerator", "model_path", "max_len", "seed", "lora")


def check_engine(cfg: RecipeConfig) -> None:
    """Resolve the engine and check its options without constructing it (that needs a model)."""
    load_builtins()
    ENGINES.check(cfg.rollout.engine.name, cfg.rollout.engine.kwargs, **{k: None for k in ENGINE_CONTEXT})


def build_engine(cfg: RecipeConfig, **context: Any):
    return ENGINES.build(cfg.rollout.engine.name, cfg.rollout.engine.kwargs, **context)
