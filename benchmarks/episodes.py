"""Multi-turn rollout speed: episodes/s and model tokens/s on hf vs vllm, and the share of time spent in tools.

Each episode of the `small` model (~12M, random weights, tool-aware tiny chat template) is: a forced first turn
that calls ``slow_multiply`` (so every episode really has two turns), the tool result rendered and appended, then
a second turn sampled by the engine from the episode's token ids (up to ``--max-new-tokens``). The tool sleeps
``--tool-latency`` seconds (one value per case) and runs in the process executor (``--workers`` processes); while
it sleeps, other episodes generate. Per case: episodes/s, model tokens/s (sampled tokens only), the seconds in
the engine and in the environment (tool waits, rendering), and env_share = environment / (engine + environment).
Usage: python benchmarks/episodes.py [--engines hf vllm] [--episodes 64] [--tool-latency 0 0.2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALL = '<tool_call>\n{"name": "slow_multiply", "arguments": {"a": 37, "b": 52, "latency": %s}}\n</tool_call>'


def slow_multiply(a: int, b: int, latency: float) -> int:
    """Multiply two integers slowly.

    Args:
        a: the first factor
        b: the second factor
        latency: seconds to sleep first
    """
    time.sleep(latency)
    return a * b


class ForcedFirstTurn:
    """Engine wrapper: an episode's first turn is the tool call; later turns come from the real engine."""

    def __init__(self, engine, tokenizer, latency: float):
        self.engine, self.tok = engine, tokenizer
        self.call = tokenizer(CALL % latency, add_special_tokens=False).input_ids + [tokenizer.convert_tokens_to_ids(
            "<|im_end|>")]

    def generate(self, prompt_ids, seeds, params):
        from rlkit.rollout import FINISH_STOP, Completion
        later = [i for i, ids in enumerate(prompt_ids) if "<tool_response>" in self.tok.decode(ids)]
        out = [Completion(list(self.call), [0.0] * len(self.call), FINISH_STOP) for _ in prompt_ids]
        if later:
            for i, comp in zip(later, self.engine.generate([prompt_ids[i] for i in later],
                                                           [seeds[i] for i in later], params)):
                out[i] = comp
        return out


def make_engine(name: str, path: Path, model, tok):
    if name == "hf":
        from rlkit.rollout.hf import HFEngine
        return HFEngine(model, tok)
    from rlkit.rollout.vllm_engine import VLLMEngine
    return VLLMEngine(model, tok, model_path=str(path), max_model_len=1024, kv_cache_gib=2.0)


def run_case(engine, tok, episodes: int, latency: float, workers: int, max_new: int) -> dict:
    from rlkit.data import PromptItem
    from rlkit.environments.build import build_environment
    from rlkit.environments.episode import EpisodeMetrics
    from rlkit.environments.runner import EpisodeRunner
    from rlkit.rollout import SamplingParams
    env = build_environment("tools", {"tools": [f"{Path(__file__).resolve()}:slow_multiply"], "max_turns": 2,
                                      "workers": workers, "tool_timeout_s": 60.0})
    items = [PromptItem(index=i, prompt=f"{10 + i % 90}*52=", prompt_ids=[], raw_prompt=f"{10 + i % 90}*52=")
             for i in range(episodes)]
    runner, metrics = EpisodeRunner(env, tok), EpisodeMetrics()
    runner.run(ForcedFirstTurn(engine, tok, latency), items, list(range(episodes)), SamplingParams(max_new, 1.0))
    metrics = EpisodeMetrics()   # the warm-up above started the tool workers and warmed the engine's batch shapes
    t0 = time.perf_counter()
    runner.run(ForcedFirstTurn(engine, tok, latency), items, list(range(episodes)), SamplingParams(max_new, 1.0),
               metrics)
    wall = time.perf_counter() - t0
    env.close()
    return {"episodes_per_s": episodes / wall, "model_tokens_per_s": metrics.model_tokens / wall, "wall_s": wall,
            "engine_s": metrics.generate_s, "environment_s": metrics.environment_s,
            "env_share": metrics.environment_s / max(metrics.generate_s + metrics.environment_s, 1e-9),
            "tool_seconds_summed": metrics.stats.seconds, "turns_mean": metrics.turns / episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--tool-latency", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "episodes.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.tiny_model import build_tiny_model
    path = build_tiny_model(Path(tempfile.mkdtemp(prefix="rlkit-episodes-")) / "small", size="small", tools=True)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = []
    for name in args.engines:
        engine = make_engine(name, path, model, tok)
        try:
            for latency in args.tool_latency:
                row = {"engine": name, "tool_latency_s": latency}
                row |= run_case(engine, tok, args.episodes, latency, args.workers, args.max_new_tokens)
                rows.append(row)
        finally:
            engine.close()
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) if isinstance(r[c], str) else f"{r[c]:.4g}" for c in cols))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
