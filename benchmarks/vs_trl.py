"""rlkit vs TRL's ``GRPOTrainer`` on the same GRPO run, side by side: s/step, completion tokens/s and the ratio.

The run (both frameworks, default settings otherwise): the `small` model (~12M), 2-digit additions, 32 prompts x 8
samples per step, up to ``--max-new-tokens`` new tokens, temperature 1, one optimizer step per rollout batch in
micro-batches of 16 completions, lr 1e-5, fp32 on CPU, generation with the policy's own ``generate`` (rlkit
``rollout.engine=hf``, TRL ``use_vllm=False``) and the same reward function (:func:`digit_share`, passed unchanged to
both). TRL: ``per_device_train_batch_size=16``, ``gradient_accumulation_steps=16`` (one generation of 256
completions per optimizer step), ``beta=0`` (its default; rlkit's default losses have no KL term either).

Cases (``--cases``):
  fixed   the model as built: a random model rarely emits EOS, so nearly every completion runs to the cap
  long    long-tailed lengths: ``--stop-tokens`` byte tokens become extra stop tokens of the model
          (``generation_config.eos_token_id``, which both frameworks honour), so lengths are geometric, cut at the cap

Every (case, framework) pair runs in its own process (the two trainers must not share accelerate's state); the
first step is a warm-up and is left out. TRL is skipped with a note when it is not installed.

Usage: python benchmarks/vs_trl.py [--cases fixed long] [--frameworks rlkit trl] [--steps 4] [--max-new-tokens 64]
           [--stop-tokens 20] [--rlkit-overrides train.max_tokens_per_micro=null] [--json runs/bench/vs_trl.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

PROMPTS, N, MICRO, LR = 32, 8, 16, 1e-5


def digit_share(completions, **kwargs) -> list[float]:
    """Share of digits among the completion's characters: a TRL-style reward both trainers call unchanged, with
    spread within a group even for a random model (an exact-match reward would be 0 everywhere and leave every
    advantage 0)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["fixed", "long"], choices=["fixed", "long"])
    ap.add_argument("--steps", type=int, default=4, help="measured steps (one warm-up step more is run)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--stop-tokens", type=int, default=20)
    ap.add_argument("--frameworks", nargs="+", default=["rlkit", "trl"], choices=["rlkit", "trl"])
    ap.add_argument("--rlkit-overrides", nargs="*", default=[], help="dotted overrides for the rlkit runs")
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "vs_trl.json"))
    ap.add_argument("--worker", nargs=4, metavar=("FRAMEWORK", "MODEL", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args, *args.worker)
    from rlkit.tasks import write_task
    from rlkit.tiny_model import build_tiny_model
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-vs-trl-"))
    data = write_task("arithmetic", tmp / "data", train=2000, eval=100, seed=0, difficulties=(2,), ops="+")
    model = build_tiny_model(tmp / "small", size="small")
    frameworks = [f for f in args.frameworks if f != "trl" or importlib.util.find_spec("trl")]
    if "trl" in args.frameworks and "trl" not in frameworks:
        print("note: trl is not installed (pip install -e '.[dev]'): rlkit only")
    results = []
    for case in args.cases:
        path = model if case == "fixed" else with_stop_tokens(model, tmp / "small_long", args.stop_tokens)
        for fw in frameworks:
            out = tmp / f"{case}_{fw}.json"
            cmd = [sys.executable, __file__, "--worker", fw, str(path), data["train"], str(out),
                   "--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
                   "--rlkit-overrides", *args.rlkit_overrides]
            subprocess.run(cmd, check=True, cwd=ROOT)
            results.append({"case": case, "framework": fw, **json.loads(out.read_text())})
    print_table(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"overrides": args.rlkit_overrides, "results": results}, indent=2))
    print(f"JSON: {args.json}")
    shutil.rmtree(tmp, ignore_errors=True)


def print_table(results: list[dict]) -> None:
    print("case | framework | s/step | completion tokens/step | tokens/s | rlkit speed-up")
    for r in results:
        trl = next((x for x in results if x["case"] == r["case"] and x["framework"] == "trl"), None)
        ratio = f"{trl['step_s'] / r['step_s']:.2f}x" if trl and r["framework"] == "rlkit" else ""
        print(f"{r['case']} | {r['framework']} | {r['step_s']:.2f} | {r['tokens_per_step']:.0f} | "
              f"{r['tokens_per_step'] / r['step_s']:.0f} | {ratio}")


def with_stop_tokens(model: Path, out: Path, k: int) -> Path:
    """A copy of ``model`` that also stops at the first ``k`` byte tokens ('!', '"', ...)."""
    from transformers import AutoTokenizer
    if not out.exists():
        shutil.copytree(model, out)
        tok = AutoTokenizer.from_pretrained(out)
        stops = [i for i in range(len(tok)) if i not in tok.all_special_ids][:k]
        path = out / "generation_config.json"
        cfg = json.loads(path.read_text())
        eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
        cfg["eos_token_id"] = eos + stops
        path.write_text(json.dumps(cfg, indent=2))
    return out


def worker(args, framework: str, model: str, data: str, out: str) -> None:
    fn = run_rlkit if framework == "rlkit" else run_trl
    step_s, tokens, split = fn(model, data, Path(out).with_suffix(""), args)
    Path(out).write_text(json.dumps({"step_s": step_s, "tokens_per_step": tokens, "steps": args.steps, **split}))


def run_rlkit(model: str, data: str, out: Path, args) -> tuple[float, float]:
    from step_time import _overrides, run_case, small_base
    reward = {"name": f"{Path(__file__).resolve()}:digit_share"}
    base = small_base(Path(model), args.max_new_tokens, reward=reward, micro_batch_size=MICRO)
    over = _overrides(Path(model), {"train": data, "eval": data}, out, args.steps + 1, ["rollout.engine=hf"])
    row = run_case("rlkit", None, base, over + args.rlkit_overrides, out)
    return row["step_s"], row["completion_tokens_per_step"], {k: row[k] for k in ("generate_s", "score_s", "train_s")}


def run_trl(model: str, data: str, out: Path, args) -> tuple[float, float]:
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends, self.lengths = [time.perf_counter()], []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=MICRO,
                        gradient_accumulation_steps=PROMPTS * N // MICRO, num_generations=N,
                        max_completion_length=args.max_new_tokens, temperature=1.0, learning_rate=LR,
                        max_steps=args.steps + 1, logging_steps=1, save_strategy="no", report_to="none",
                        lr_scheduler_type="constant", seed=0)
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=digit_share, args=config, callbacks=[clock],
                          train_dataset=load_dataset("json", data_files=data, split="train"))
    trainer.train()
    steps = [b - a for a, b in zip(clock.ends[1:], clock.ends[2:])]          # drop the warm-up step
    return statistics.fmean(steps), statistics.fmean(clock.lengths[1:]) * PROMPTS * N, {}


if __name__ == "__main__":
    main()
