"""``rlkit`` command line: train | validate | show | list | sft | tiny-model | make-data | eval | plot | export |
rollout-server.

Runs as ``rlkit train RECIPE [dotted.key=value ...]`` or under ``accelerate launch -m rlkit.cli train RECIPE``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rlkit.run_logging import configure_console

_EXPECTED = (ValueError, FileNotFoundError, OSError, ImportError, RuntimeError)


def _cmd_train(args) -> int:
    from rlkit.config import load_config
    from rlkit.trainer import train
    cfg = load_config(args.recipe, args.overrides)
    result = train(cfg)
    before, after = result.get("before/eval/accuracy"), result.get("after/eval/accuracy")
    if after is not None:
        text = f"held-out accuracy: after RL {after:.1%}"
        if before is not None:
            text = f"held-out accuracy: before RL {before:.1%} -> after RL {after:.1%} ({(after - before) * 100:+.1f} points)"
        print(text, flush=True)
    return 0


def _cmd_validate(args) -> int:
    from rlkit.config import load_config
    from rlkit.session import check_recipe
    recipes = [a for a in args.recipes if "=" not in a]
    overrides = [a for a in args.recipes if "=" in a] + (args.set or [])   # as `train` takes them
    if not recipes:
        raise SystemExit(f"rlkit validate: no recipe among {args.recipes}; give RECIPE [RECIPE ...] "
                         "[dotted.key=value ...]")
    for recipe in recipes:
        cfg = load_config(recipe, overrides)
        plugins, _ = check_recipe(cfg, check_files=not args.no_files)
        names = ", ".join(f"{k}={v.plugin_name}" for k, v in plugins.all().items())
        print(f"OK {recipe}: {names}")
    return 0


def _cmd_show(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlkit.batch_math import batch_arithmetic
    from rlkit.config import dump_config, load_config
    cfg = load_config(args.recipe, args.overrides)
    print(f"# resolved config of {args.recipe} (defaults included)")
    print(dump_config(cfg))
    world = args.num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    table = Table(title=f"batch arithmetic ({world} process{'es' if world > 1 else ''})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    arith = batch_arithmetic(cfg, world)
    for k, v in arith.items():
        if k != "notes":
            table.add_row(k, f"{v:g}" if isinstance(v, float) else str(v))
    Console(width=max(Console().width, 110)).print(table)
    for note in arith["notes"]:
        print(f"note: {note}")
    if not args.no_memory:
        _print_memory_estimate(cfg, world, args.sharding, args.device_gib)
    return 0


def _print_memory_estimate(cfg, world: int, sharding: str, device_gib: float) -> None:
    from rich.console import Console

    from rlkit.build import build_plugins
    from rlkit.memory_estimate import estimate_memory, format_estimate, model_shape
    try:
        shape = model_shape(cfg)
    except (OSError, ValueError) as exc:
        print(f"note: no memory estimate: could not read the config of model.name_or_path "
              f"'{cfg.model.name_or_path}' ({str(exc).splitlines()[0]}); download the model or point it at a local "
              "directory")
        return
    needs_ref = "ref_logprobs" in build_plugins(cfg).requires()
    est = estimate_memory(cfg, shape, world=world, sharding=sharding, device_gib=device_gib, needs_ref=needs_ref)
    Console(width=max(Console().width, 130)).print(format_estimate(est, world=world, sharding=sharding,
                                                                   device_gib=device_gib))
    for note in est.notes:
        print(f"note: {note}")


def _cmd_list(args) -> int:
    from rlkit.plugins import load_builtins
    from rlkit.registry import REGISTRIES
    load_builtins()
    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    for kind in kinds:
        if kind not in REGISTRIES:
            from rlkit.registry import closest
            raise ValueError(f"unknown plug-in kind '{kind}'{closest(kind, REGISTRIES)}; kinds: {', '.join(REGISTRIES)}")
        print(f"{kind}:")
        for name, obj in REGISTRIES[kind].items():
            doc = (obj.__doc__ or "").strip().splitlines()
            print(f"  {name:28s} {doc[0] if doc else ''}")
    return 0


def _cmd_tiny_model(args) -> int:
    from rlkit.tiny_model import build_tiny_model, parameter_count
    path = build_tiny_model(args.out_dir, size=args.size, arch=args.arch, seed=args.seed,
                            chat_template=args.chat_template, tools=args.tools)
    from transformers import AutoModelForCausalLM
    print(f"wrote {args.size} {args.arch} model ({parameter_count(AutoModelForCausalLM.from_pretrained(path)):,} "
          f"parameters) to {path}")
    return 0


def _cmd_make_data(args) -> int:
    from rlkit.tasks import write_task
    kwargs = {"train": args.train, "eval": args.eval, "seed": args.seed}
    if args.difficulties:
        kwargs["difficulties"] = tuple(int(d) for d in args.difficulties.split(","))
    if args.ops:
        kwargs["ops"] = args.ops
    if args.teacher_error:
        kwargs["teacher_error"] = args.teacher_error
    if args.b_digits:
        kwargs["b_digits"] = args.b_digits
    if args.tool_rate is not None:
        kwargs["tool_rate"] = args.tool_rate
    paths = write_task(args.task, args.out_dir, **kwargs)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def _cmd_sft(args) -> int:
    from rlkit.sft import SFTConfig, run_sft
    run_sft(SFTConfig(model=args.model, data=args.data, output=args.output, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                      prompt_column=args.prompt_column, answer_column=args.answer_column, seed=args.seed,
                      messages_column=args.messages_column, tools=args.tools))
    return 0


def _cmd_eval(args) -> int:
    from rich.console import Console

    from rlkit.eval_at_k import format_report, run_eval, summary_line
    report = run_eval(args)
    print(summary_line(report))
    Console(width=max(Console().width, 100)).print(format_report(report))
    if report["unscored"]:
        print(f"note: {report['unscored']} sample(s) could not be scored (every reward function failed)")
    print(f"JSON: {report['json']}")
    return 0


def _cmd_plot(args) -> int:
    from rlkit.plot import plot_run
    for path in plot_run(args.run_dir):
        print(path)
    return 0


def _cmd_export(args) -> int:
    from rlkit.lora_export import export_merged
    out = export_merged(args.run_dir, args.output, checkpoint=args.checkpoint, base=args.base)
    print(f"wrote the merged model (base + LoRA adapter) to {out}; load it with "
          "AutoModelForCausalLM.from_pretrained")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlkit", description="RL post-training for LLMs on verifiable rewards")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_data_commands(sub)
    _add_result_commands(sub)
    from rlkit.rollout.launcher import add_parser as add_rollout_server
    add_rollout_server(sub)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show every library's log records and progress bars on the console (by default "
                             "only rlkit's messages and warnings; everything is in the run's run.log)")
    return p


def _add_run_commands(sub) -> None:
    """train, validate, show, list."""
    t = sub.add_parser("train", help="run an RL recipe (also under `accelerate launch -m rlkit.cli train`)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.steps=20")
    t.set_defaults(fn=_cmd_train)
    v = sub.add_parser("validate", help="build every plug-in of one or more recipes without loading a model")
    v.add_argument("recipes", nargs="+", metavar="RECIPE_OR_OVERRIDE",
                   help="recipe paths, then dotted.key=value overrides applied to each (as for train)")
    v.add_argument("--set", action="append", help="override applied to every recipe (repeatable)")
    v.add_argument("--no-files", action="store_true", help="skip checks that model/data paths exist")
    v.set_defaults(fn=_cmd_validate)
    s = sub.add_parser("show", help="print the resolved config, the batch arithmetic and a memory estimate per device")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--num-processes", type=int, default=None, help="world size to compute per-process shares for")
    s.add_argument("--sharding", default="none", choices=["none", "fsdp2", "fsdp2_offload", "zero2", "zero3"],
                   help="training topology for the memory estimate (none = DDP; see launch/)")
    s.add_argument("--device-gib", type=float, default=80.0, help="memory of one accelerator, for the estimate")
    s.add_argument("--no-memory", action="store_true", help="skip the memory estimate (needs the model's config)")
    s.set_defaults(fn=_cmd_show)
    ls = sub.add_parser("list", help="list registered plug-ins")
    ls.add_argument("kind", nargs="?")
    ls.set_defaults(fn=_cmd_list)

def _add_data_commands(sub) -> None:
    """tiny-model, make-data, sft: what a run starts from."""
    tm = sub.add_parser("tiny-model", help="write a small random Qwen2/Llama model + local tokenizer")
    tm.add_argument("out_dir")
    tm.add_argument("--size", default="tiny", choices=["tiny", "small"])
    tm.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    tm.add_argument("--seed", type=int, default=0)
    tm.add_argument("--chat-template", action="store_true")
    tm.add_argument("--tools", action="store_true",
                    help="chat template with tool support; turns end at <|im_end|>")
    tm.set_defaults(fn=_cmd_tiny_model)
    md = sub.add_parser("make-data", help="write train/eval splits of a synthetic task")
    md.add_argument("task")
    md.add_argument("out_dir")
    md.add_argument("--train", type=int, default=5000)
    md.add_argument("--eval", type=int, default=500)
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--difficulties", default=None, help="comma-separated, e.g. 1,2")
    md.add_argument("--ops", default=None, help="operators, e.g. +-")
    md.add_argument("--b-digits", type=int, default=None, help="digits of the second operand (default: same)")
    md.add_argument("--teacher-error", type=float, default=0.0,
                    help="also write a teacher_answer column that forgets the ones-column carry on this "
                         "fraction of the + problems that have one")
    md.add_argument("--tool-rate", type=float, default=None,
                    help="tool_multiply: fraction of train problems whose teacher calls the tool (default 0.25)")
    md.set_defaults(fn=_cmd_make_data)
    sf = sub.add_parser("sft", help="supervised warm start on prompt/answer pairs or conversations")
    sf.add_argument("--model", required=True)
    sf.add_argument("--data", required=True)
    sf.add_argument("--output", required=True)
    sf.add_argument("--steps", type=int, default=300)
    sf.add_argument("--batch-size", type=int, default=32)
    sf.add_argument("--lr", type=float, default=1e-3)
    sf.add_argument("--warmup-steps", type=int, default=20)
    sf.add_argument("--prompt-column", default="prompt")
    sf.add_argument("--answer-column", default="answer")
    sf.add_argument("--seed", type=int, default=0)
    sf.add_argument("--messages-column", default=None,
                    help="train on the conversations in this column (assistant turns only) instead of prompt/answer")
    sf.add_argument("--tools", nargs="+", default=[], metavar="MODULE:FUNCTION",
                    help="functions whose schemas the chat template renders (with --messages-column)")
    sf.set_defaults(fn=_cmd_sft)

def _add_result_commands(sub) -> None:
    """eval, plot, export: what a run leaves."""
    ev = sub.add_parser("eval", help="n samples per held-out prompt: mean reward, pass@k and max@k for several k")
    ev.add_argument("source", help="recipe YAML, run directory, or checkpoint directory")
    ev.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the recipe")
    ev.add_argument("--n", type=int, default=16, help="samples per prompt")
    ev.add_argument("--k", default="1,2,4,8,16", help="comma-separated k values (each <= n)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--max-prompts", type=int, default=500)
    ev.add_argument("--model", default=None, help="evaluate this model instead of the source's")
    ev.add_argument("--data", default=None, help="prompt file instead of the recipe's data.eval")
    ev.add_argument("--engine", default=None, help="rollout engine (hf, vllm, auto); default: the recipe's")
    ev.add_argument("--json", default=None, help="report path (default: RUN_DIR/eval_at_k.json or ./eval_at_k.json)")
    ev.set_defaults(fn=_cmd_eval)
    pl = sub.add_parser("plot", help="write PNG curves (reward, accuracy, KL) of a run directory")
    pl.add_argument("run_dir")
    pl.set_defaults(fn=_cmd_plot)
    ex = sub.add_parser("export", help="merge a LoRA run's adapter into a full Hugging Face checkpoint")
    ex.add_argument("run_dir")
    ex.add_argument("--output", default=None, help="output directory (default RUN_DIR/merged)")
    ex.add_argument("--checkpoint", default=None,
                    help="'latest' or a checkpoint directory, instead of RUN_DIR/final")
    ex.add_argument("--base", default=None, help="base model (default: model.name_or_path of RUN_DIR/config.yaml)")
    ex.set_defaults(fn=_cmd_export)


def _sigterm_as_interrupt(signum, frame):  # schedulers (SLURM, k8s) stop jobs with SIGTERM
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console(args.verbose)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        code = args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _EXPECTED as exc:
        if os.environ.get("RLKIT_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # after a normal return only: the ranks have finished their collectives (on an error path another rank may
    # still be inside one, and tearing the group down could block the exit that reports the error)
    from rlkit.dist import close_process_group
    close_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
