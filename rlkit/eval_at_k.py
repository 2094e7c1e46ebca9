"""``rlkit eval``: n samples per held-out prompt -> mean reward, pass@k (binary success) and max@k (any reward).

For every prompt with n samples, c successes and rewards r_1..r_n, the unbiased estimators
(``rlkit.functional.max_at_k``) are averaged over prompts:

    pass@k = 1 - C(n - c, k) / C(n, k)                         (Chen et al., arXiv 2107.03374)
    max@k  = (1/C(n,k)) sum_{i>=k} C(i-1, k-1) r_(i)           (rewards sorted ascending; Bagirov et al. App. C.1)

Success is the reward functions' own ``success`` signal where they report one, else ``reward > 0``. Sampling is
seeded per (prompt, sample) like training, so a rerun gives the same numbers. Unscorable samples (every reward
function failed) count as failures with the lowest reward of their prompt and are reported.

SOURCE is a recipe (its model and ``data.eval``), a run directory (its ``config.yaml`` and ``final/`` model) or a
checkpoint directory (``.../checkpoints/step_N``: the run's config with that step's policy weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from rlkit.config import RecipeConfig, load_config
from rlkit.data import stack_columns
from rlkit.functional import max_at_k_estimate, pass_at_k
from rlkit.rollout import SamplingParams, completion_seed

log = logging.getLogger("rlkit")


@dataclass
class EvalSource:
    cfg: RecipeConfig
    model_path: str
    checkpoint: Path | None     # policy weights to load over model_path (a training checkpoint)
    run_dir: Path | None


def resolve_source(source: str, overrides: list[str], model: str | None = None) -> EvalSource:
    path = Path(source)
    if path.is_file():
        cfg = load_config(path, overrides)
        return EvalSource(cfg, model or cfg.model.name_or_path, None, None)
    if (path / "trainer_state.pt").is_file():                 # <run>/checkpoints/step_N
        run = path.parent.parent
        cfg = load_config(run / "config.yaml", overrides)
        if cfg.model.lora is not None and model is None:   # the checkpoint holds peft weights, not a model's
            raise FileNotFoundError(f"checkpoint '{path}' is from a LoRA run: merge it first with `rlkit export {run} "
                                    f"--checkpoint {path} --output DIR`, then `rlkit eval {path} --model DIR`")
        return EvalSource(cfg, model or cfg.model.name_or_path, None if model else path, run)
    if (path / "config.yaml").is_file():                      # a run directory
        cfg = load_config(path / "config.yaml", overrides)
        final = path / "final"
        if model is None and (final / "adapter_config.json").is_file():   # LoRA run: evaluate its merged export
            if not (path / "merged/config.json").is_file():
                raise FileNotFoundError(f"run directory '{path}' holds a LoRA adapter in final/: merge it first with "
                                        f"`rlkit export {path}` (writes {path / 'merged'}), then evaluate again")
            final = path / "merged"
        if model is None and not (final / "config.json").is_file():
            raise FileNotFoundError(f"run directory '{path}' has no final/ model (the run did not finish); evaluate "
                                    f"one of its checkpoints instead: rlkit eval {path}/checkpoints/step_N")
        return EvalSource(cfg, model or str(final), None, path)
    raise FileNotFoundError(f"'{source}' is neither a recipe file, a run directory (with config.yaml) nor a "
                            "checkpoint directory (with trainer_state.pt)")


def parse_ks(text: str, n: int) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError as exc:
        raise ValueError(f"--k '{text}' must be comma-separated integers, e.g. 1,2,4,8") from exc
    bad = [k for k in ks if not 1 <= k <= n]
    if not ks or bad:
        raise ValueError(f"--k {bad or text}: every k must be in [1, n={n}]; raise --n or drop the larger k")
    return ks


def prompt_scores(rewards: torch.Tensor, success: torch.Tensor, ks: list[int]) -> dict:
    """One prompt's n samples -> successes, mean reward, pass@k and max@k for each k."""
    scored = ~torch.isnan(rewards)                                                         # [n]
    floor = float(rewards[scored].min()) if scored.any() else 0.0
    r = torch.where(scored, rewards, torch.full_like(rewards, floor)).double()             # [n]
    ok = torch.where(torch.isnan(success), (rewards > 0).double(), success.double())      # [n]
    ok = torch.nan_to_num(ok) * scored                                                     # [n]
    n, c = len(r), int(ok.sum().round())
    return {"successes": c, "unscored": int((~scored).sum()), "mean_reward": float(r.mean()),
            "pass@k": {k: pass_at_k(n, c, k) for k in ks}, "max@k": {k: max_at_k_estimate(r, k) for k in ks}}


def evaluate_at_k(engine, prompts: list, rewards, tokenizer, *, n: int, ks: list[int], params: SamplingParams,
                  seed: int = 0) -> dict:
    """Generate n samples for every prompt, score them, and average the per-prompt estimates."""
    ids = [p.prompt_ids for p in prompts for _ in range(n)]
    seeds = [completion_seed(seed, -2, p.index, j, salt=2) for p in prompts for j in range(n)]
    completions = engine.generate(ids, seeds, params)
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
    flat = [p for p in prompts for _ in range(n)]
    columns = stack_columns(flat)
    result = rewards.score([p.prompt for p in flat], texts, columns,
                           completion_ids=[c.token_ids for c in completions])
    per_prompt = []
    for i, p in enumerate(prompts):
        part = slice(i * n, (i + 1) * n)
        row = prompt_scores(result.rewards[part], result.success[part], ks)
        per_prompt.append({"index": p.index, **row})
    mean = lambda key, k: sum(r[key][k] for r in per_prompt) / max(len(per_prompt), 1)   # noqa: E731
    lengths = [len(c.token_ids) for c in completions]
    return {"n": n, "prompts": len(prompts), "temperature": params.temperature,
            "mean_reward": sum(r["mean_reward"] for r in per_prompt) / max(len(per_prompt), 1),
            "pass@k": {k: mean("pass@k", k) for k in ks}, "max@k": {k: mean("max@k", k) for k in ks},
            "unscored": sum(r["unscored"] for r in per_prompt),
            "length_mean": sum(lengths) / max(len(lengths), 1), "per_prompt": per_prompt}


def run_eval(args) -> dict:
    """The ``rlkit eval`` command: build model, engine, prompts and rewards from SOURCE and evaluate."""
    from accelerate import Accelerator

    from rlkit.build import build_engine
    from rlkit.modeling import load_causal_lm, load_tokenizer
    from rlkit.session import prompt_source, check_recipe

    src = resolve_source(args.source, args.overrides, args.model)
    cfg = src.cfg
    if args.engine:
        cfg.rollout.engine.name = args.engine
    if not cfg.data.eval and not args.data:
        raise ValueError("nothing to evaluate on: the recipe has no data.eval; pass --data FILE")
    ks = parse_ks(args.k, args.n)
    _, rewards = check_recipe(cfg, check_files=False)
    model_cfg = cfg.model.model_copy(update={"name_or_path": src.model_path})
    tokenizer = load_tokenizer(model_cfg)
    source = prompt_source(cfg, tokenizer, rewards, args.data or cfg.data.eval,
                            cfg.data.eval_split if not args.data else "train", shuffle=False)
    prompts = [source.item(i) for i in range(min(len(source), args.max_prompts))]
    acc = Accelerator()
    policy = load_causal_lm(model_cfg, trainable=False).to(acc.device)
    if src.checkpoint is not None:
        _load_checkpoint_weights(policy, src.checkpoint)
    engine = build_engine(cfg, model=policy, tokenizer=tokenizer, accelerator=acc, model_path=src.model_path,
                          max_len=cfg.rollout.max_new_tokens, seed=cfg.train.seed)
    if src.checkpoint is not None:
        engine.sync_weights(policy)
    params = SamplingParams(args.max_new_tokens or cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                            args.temperature, cfg.rollout.top_p, cfg.rollout.top_k)
    try:
        report = evaluate_at_k(engine, prompts, rewards, tokenizer, n=args.n, ks=ks, params=params,
                               seed=cfg.train.seed)
    finally:
        engine.close()
    report = {"source": str(args.source), "model": src.model_path,
              "checkpoint": str(src.checkpoint) if src.checkpoint else None, **report}
    out = Path(args.json) if args.json else (src.run_dir or Path(".")) / "eval_at_k.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    report["json"] = str(out)
    return report


def _load_checkpoint_weights(policy, checkpoint: Path) -> None:
    from safetensors.torch import load_file
    files = sorted(checkpoint.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint '{checkpoint}' holds no model*.safetensors")
    missing, unexpected = policy.load_state_dict(load_file(str(files[0])), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]       # tied to the embedding, saved once
    if missing or unexpected:
        raise ValueError(f"checkpoint '{checkpoint}' does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    policy.tie_weights()


def summary_line(report: dict) -> str:
    return (f"{report['prompts']} prompts x {report['n']} samples at temperature {report['temperature']:g}: "
            f"mean reward {report['mean_reward']:.4f}, mean length {report['length_mean']:.1f} tokens")


def format_report(report: dict):
    from rich.table import Table
    table = Table(title="held-out pass@k / max@k")
    table.add_column("k", justify="right")
    table.add_column("pass@k", justify="right")
    table.add_column("max@k", justify="right")
    for k in report["pass@k"]:
        table.add_row(str(k), f"{report['pass@k'][k]:.4f}", f"{report['max@k'][k]:.4f}")
    return table
