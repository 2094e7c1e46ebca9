"""Rollout engines on the `small` model (~12M): 32 prompts x 8 samples, up to 256 new tokens, stopping at EOS.

Prints, per engine: completion tokens/s, weight-sync seconds and GB/s (engines that copy weights), the per-step
time split, and the overhead share = (step - generation - training compute) / step.
``vllm_server`` starts ``rlkit rollout-server`` (``--server-workers`` workers sharing ``--server-cores``) for its
case and stops it afterwards; its sync goes over gloo between processes instead of in-process.
Usage: python benchmarks/rollout.py [--engines hf vllm vllm_server] [--steps 3] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from step_time import _overrides, run_case, small_base, small_setup  # noqa: E402



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm", "vllm_server"])
    ap.add_argument("--server-workers", type=int, default=1)
    ap.add_argument("--server-cores", default=None, help="CPU cores for the rollout workers (default: all)")
    ap.add_argument("--server-port", type=int, default=51390)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--json", default=str(ROOT / "runs" / "bench" / "rollout.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rlkit-rollout-"))
    model, data = small_setup(tmp)
    base = small_base(model, args.max_new_tokens)
    results = []
    for engine in args.engines:
        out = tmp / f"run_{engine}"
        server, extra = None, [f"rollout.engine={engine}"]
        if engine == "vllm_server":
            server, addresses = start_server(model, args)
            extra = ["rollout.engine.name=vllm_server", f"rollout.engine.addresses={addresses}"]
        try:
            results.append(run_case(engine, None, base, _overrides(model, data, out, args.steps + 1, extra), out))
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)
    cols = ["case", "gen_tokens_per_s", "completion_tokens_per_step", "step_s", "generate_s", "train_s", "other_s",
            "overhead_share", "sync_s", "sync_gb", "sync_gb_per_s", "canary_diff"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) if isinstance(r.get(c), str) else f"{r.get(c, float('nan')):.4g}" for c in cols))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"JSON: {args.json}")


def start_server(model: Path, args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "rlkit.cli", "rollout-server", "--model", str(model), "--workers",
           str(args.server_workers), "--port", str(args.server_port), "--cpu", "--kv-cache-gib", "2"]
    if args.server_cores:
        cmd += ["--cpu-cores", args.server_cores]
    proc = subprocess.Popen(cmd, env=os.environ | {"PYTHONPATH": str(ROOT)})
    return proc, ",".join(f"127.0.0.1:{args.server_port + i}" for i in range(args.server_workers))


if __name__ == "__main__":
    main()
