"""Rollout engines on the `small` model (~12M): 32 prompts x 8 samples, stopping at EOS or ``--max-new-tokens``.

Cases (``--cases``), each a short training run:
  hf            the policy's own ``generate``
  vllm          colocated vLLM in the trainer process (in-place ``reload_weights``)
  server1       ``vllm_server`` on 1 stock ``vllm serve`` (started by ``rlkit rollout-server``), native weight
                transfer over rlkit's gloo backend
  server2       the same on 2 servers; each server gets one core (``--server-cores`` shares out others)

Every server case runs once per ``--staleness`` value k (``rollout.max_staleness``). ``--stop-tokens K`` makes the
length distribution long-tailed: K frequent byte tokens become stop tokens of the model (``generation_config``),
so a random model stops after a geometric number of tokens instead of always at the cap.

Prints, per case: completion tokens/s, weight-sync seconds and GB/s, the per-step time split, the overhead share
= (step - generation - training compute) / step (k = 0 only: with k > 0 generation overlaps training, so compare
step_s), and the mean staleness.
Usage: python benchmarks/rollout.py [--cases vllm server1 server2] [--staleness 0 1 2] [--steps 3]
           [--max-new-tokens 256] [--stop-tokens 0] [--server-cores 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from step_time import _overrides, run_case, small_base, small_setup  # noqa: E402

COLS = ["case", "gen_tokens_per_s", "completion_tokens_per_step", "step_s", "generate_s", "train_s", "other_s",
        "overhead_share", "sync_s", "sync_gb", "sync_gb_per_s", "canary_diff", "staleness"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["vllm", "server1", "server2"])
    ap.add_argument("--staleness", nargs="+", type=int, default=[0])
    ap.add_argument("--server-cores", default=None, help="CPU cores shared out to the servers (default: one each)")
    ap.add_argument("--server-port", type=int, default=51390)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--stop-tokens", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "rollout.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-rollout-"))
    model, data = small_setup(tmp)
    if args.stop_tokens:
        model = long_tailed(model, tmp / "small_long", args.stop_tokens)
    base = small_base(model, args.max_new_tokens)
    results = []
    for case in args.cases:
        for k in (args.staleness if case.startswith("server") else [0]):
            results.append(run(case, k, model, data, base, tmp, args))
    print(" | ".join(COLS))
    for r in results:
        print(" | ".join(str(r[c]) if isinstance(r.get(c), str) else f"{r.get(c, float('nan')):.4g}" for c in COLS))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"JSON: {args.json}")


def run(case: str, k: int, model: Path, data: dict, base: dict, tmp: Path, args) -> dict:
    name = case if not case.startswith("server") else f"vllm_server x{case[6:]} k={k}"
    out = tmp / f"run_{case}_{k}"
    server, extra = None, [f"rollout.engine={case}", f"rollout.max_staleness={k}"]
    if case.startswith("server"):
        server, addresses = start_servers(model, int(case[6:]), args)
        extra = ["rollout.engine.name=vllm_server", f"rollout.engine.addresses={addresses}",
                 "rollout.engine.connect_timeout_s=600", f"rollout.max_staleness={k}"]
    try:
        row = run_case(name, None, base, _overrides(model, data, out, args.steps + 1, extra), out)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stale = [r["rollout/staleness"] for r in rows if "rollout/staleness" in r][1:]
    if k > 0:     # generation runs beside training: step - generate - train is no overhead measure then
        row |= {"other_s": float("nan"), "overhead_share": float("nan")}
    return row | {"staleness": sum(stale) / max(len(stale), 1)}


def start_servers(model: Path, count: int, args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "rlkit.cli", "rollout-server", "--model", str(model), "--servers", str(count),
           "--port", str(args.server_port), "--cpu", "--kv-cache-gib", "2"]
    cores = args.server_cores or ",".join(map(str, sorted(os.sched_getaffinity(0))[:count]))   # one core each
    cmd += ["--cpu-cores", cores]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    return proc, ",".join(f"127.0.0.1:{args.server_port + i}" for i in range(count))


def long_tailed(model: Path, out: Path, stops: int) -> Path:
    """A copy of ``model`` whose generation config also stops at ``stops`` frequent byte tokens (digits, space)."""
    from transformers import AutoTokenizer
    shutil.copytree(model, out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = [tok.convert_tokens_to_ids(t) for t in tok.convert_ids_to_tokens(tok(" 0123456789+=").input_ids)]
    cfg_path = out / "generation_config.json"
    cfg = json.loads(cfg_path.read_text())
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    cfg["eos_token_id"] = eos + [i for i in ids if i not in eos][:stops]
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


if __name__ == "__main__":
    main()
