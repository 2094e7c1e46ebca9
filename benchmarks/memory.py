"""Peak memory and time of per-token log-probs + backward: full logits vs the chunked LM head (CPU).

Variants (the LM-head part of a policy-gradient step, on random inputs ``hidden`` [R,H], ``weight`` [V,H],
both requiring grad, ``targets`` [R]):
  naive    logits = hidden @ weight.T; fp32 log_softmax; gather; .sum().backward()
           (the [R,V] logits, log-softmax and their gradients all exist at once)
  ops      logits = hidden @ weight.T; rlkit.ops.logprobs_from_logits (no fp32 copies, still [R,V] logits)
  chunked  rlkit.fused_logprob.linear_logprobs: the LM head chunk by chunk, recomputed in backward
  naive_entropy, chunked_entropy   the same plus an entropy bonus with gradient (``entropy_grad=True``, the
           ``entropy`` loss): the chunked path keeps its O(chunk x V) memory (one more [c, V] buffer in backward)

Method: every variant runs in a fresh Python process (``--worker``), so allocator caches and the high-water
mark of one variant cannot leak into another. The worker allocates the inputs, reads ``ru_maxrss``
(``resource.getrusage(RUSAGE_SELF)``, the process's peak resident set; the inputs are filled in place so
that this equals the current RSS, and the JSON's ``baseline_gap_bytes`` shows any difference), runs
``--repeats`` forward+backward passes (``.grad`` reset to None before each, so every pass allocates its
gradients afresh), reads ``ru_maxrss`` again and reports the increase: the peak extra memory of
forward+backward, gradients included (grad_weight [V,H] is in every variant). Times are per pass
(median and min over the repeats; the first pass pays first-touch page faults like every later one,
since large blocks go back to the OS).
The analytic size of the full logits tensor, R*V elements, is printed for scale. The workers run with
``MALLOC_MMAP_THRESHOLD_=1048576`` (unless already set): glibc otherwise raises its mmap threshold
dynamically (up to 32 MiB), so freed mid-size blocks stay in the heap and the peak RSS of the same run
varied by +-50 % between runs at ``--small``; with a fixed threshold every tensor >= 1 MiB is returned to
the OS on free and the peak is reproducible to < 1 MiB.

Targets (memory-efficient-training issue): chunked / naive peak memory <= 25 % and time <= 1.10x. The
chunked path does 4 LM-head matmuls instead of 3 (forward is recomputed in backward), so when the matmuls
dominate (large H, CPU) its time ratio approaches 4/3; it wins back the elementwise passes and page faults
over several [R,V] fp32 tensors.

Usage: python benchmarks/memory.py [--vocab 150000 --tokens 4096 --hidden 896 --dtype float32 --repeats 3]
           [--chunk-rows N] [--variants naive chunked ops naive_entropy chunked_entropy] [--json out.json]
       python benchmarks/memory.py --small     # V=32000, R=512, H=256, 64-row chunks: a quick check
The default size needs ~8 GB of free memory for the naive variant and takes minutes on a few CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = ("float32", "bfloat16", "float64")
TARGET_MEMORY, TARGET_TIME = 0.25, 1.10
MIB = 1 << 20
MMAP_THRESHOLD = 1 << 20  # glibc: blocks >= 1 MiB are mmap'd and unmapped on free (see the module docstring)


VARIANTS = ["naive", "ops", "chunked", "naive_entropy", "chunked_entropy"]


def _maxrss_bytes() -> int:
    """Peak resident set of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_bytes() -> int | None:
    """Current resident set (Linux /proc), to check that the baseline high-water mark is not above it."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _step(variant: str, hidden, weight, targets, chunk_rows):
    """Forward (summed log-probs) of one variant; returns the scalar loss."""
    import torch

    from rlkit import ops
    from rlkit.fused_logprob import linear_logprobs

    if variant == "naive":
        logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)  # [R,V] fp32 (the logits die here)
        return logp.gather(-1, targets[:, None]).sum()
    if variant == "ops":
        logits = (hidden @ weight.T)[None]  # [1,R,V]
        return ops.logprobs_from_logits(logits, targets[None], chunk_rows=chunk_rows)[0].sum()
    if variant == "chunked":
        return linear_logprobs(hidden, weight, targets, chunk_rows=chunk_rows)[0].sum()
    if variant == "naive_entropy":  # log-probs + an entropy bonus, both with gradient, from full fp32 logits
        logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1)  # [R,V] fp32
        return logp.gather(-1, targets[:, None]).sum() + 1e-3 * (logp.exp() * logp).sum()
    if variant == "chunked_entropy":
        lp, ent = linear_logprobs(hidden, weight, targets, chunk_rows=chunk_rows, with_entropy=True, entropy_grad=True)
        return lp.sum() - 1e-3 * ent.sum()
    raise ValueError(f"unknown variant '{variant}'; valid: {', '.join(VARIANTS)}")


def worker(args) -> dict:
    """One variant in this (fresh) process: peak-RSS increase and per-pass times of forward+backward."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    # filled in place: no temporaries, so the high-water mark right after this is the current RSS
    hidden = torch.empty(args.tokens, args.hidden, dtype=dtype).normal_(generator=gen).requires_grad_(True)  # [R,H]
    weight = torch.empty(args.vocab, args.hidden, dtype=dtype).normal_(0, 0.02, generator=gen)  # [V,H]
    weight.requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)  # [R]
    before, rss_now = _maxrss_bytes(), _rss_bytes()
    forward_s, backward_s, total_s = [], [], []
    for _ in range(args.repeats):
        hidden.grad = weight.grad = None
        t0 = time.perf_counter()
        loss = _step(args.worker, hidden, weight, targets, args.chunk_rows)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        forward_s.append(t1 - t0)
        backward_s.append(t2 - t1)
        total_s.append(t2 - t0)
        loss = loss.item()
    after = _maxrss_bytes()
    return {"variant": args.worker, "peak_increase_bytes": after - before, "baseline_bytes": before,
            "baseline_gap_bytes": None if rss_now is None else before - rss_now,
            "time_s": statistics.median(total_s), "time_min_s": min(total_s),
            "forward_s": statistics.median(forward_s), "backward_s": statistics.median(backward_s),
            "times_s": total_s, "loss": loss, "grad_hidden_norm": float(hidden.grad.double().norm()),
            "grad_weight_norm": float(weight.grad.double().norm()), "threads": torch.get_num_threads()}


def run_variant(variant: str, args) -> dict:
    """``worker`` for ``variant`` in a fresh interpreter; its JSON result is the last stdout line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--vocab", str(args.vocab),
           "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.chunk_rows:
        cmd += ["--chunk-rows", str(args.chunk_rows)]
    env = os.environ.copy()
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant '{variant}' failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=150000)
    ap.add_argument("--tokens", type=int, default=4096, help="R = rows of hidden states (n*T response tokens)")
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--dtype", choices=DTYPES, default="float32")
    ap.add_argument("--repeats", type=int, default=3, help="forward+backward passes per variant (median time)")
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: the library's auto)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    ap.add_argument("--variants", nargs="+", default=["naive", "chunked"], choices=VARIANTS)
    ap.add_argument("--small", action="store_true",
                    help="quick check: V=32000, R=512, H=256 and --chunk-rows 64 unless given")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.small:
        args.vocab, args.tokens, args.hidden = 32000, 512, 256
        args.chunk_rows = args.chunk_rows or 64  # the auto chunk (2**26 elements) would hold all 512 rows
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if "naive" not in args.variants:
        args.variants = ["naive", *args.variants]  # the ratios need it

    from rlkit.fused_logprob import FUSED_CHUNK_ELEMENTS
    item = {"float32": 4, "bfloat16": 2, "float64": 8}[args.dtype]
    chunk = args.chunk_rows or max(1, FUSED_CHUNK_ELEMENTS // args.vocab)
    logits_bytes = args.tokens * args.vocab * item
    print(f"R={args.tokens} tokens, V={args.vocab}, H={args.hidden}, {args.dtype}, {args.repeats} repeats, "
          f"chunk_rows={chunk}; full logits [R,V] = {logits_bytes / MIB:.0f} MiB "
          f"({args.tokens * args.vocab * 4 / MIB:.0f} MiB in fp32), weight [V,H] = "
          f"{args.vocab * args.hidden * item / MIB:.0f} MiB")
    results = {v: run_variant(v, args) for v in args.variants}
    naive = results["naive"]
    print(f"\n{'variant':8} {'peak +MiB':>10} {'vs naive':>9} {'time s':>8} {'fwd s':>7} {'bwd s':>7} "
          f"{'vs naive':>9} {'loss':>14} {'|grad W|':>10}")
    for name, r in results.items():
        r["memory_ratio"] = r["peak_increase_bytes"] / max(1, naive["peak_increase_bytes"])
        r["time_ratio"] = r["time_s"] / naive["time_s"]
        print(f"{name:8} {r['peak_increase_bytes'] / MIB:10.0f} {r['memory_ratio']:9.3f} {r['time_s']:8.3f} "
              f"{r['forward_s']:7.3f} {r['backward_s']:7.3f} {r['time_ratio']:9.3f} {r['loss']:14.6g} "
              f"{r['grad_weight_norm']:10.6g}")
    summary = {}
    if "chunked" in results:
        c = results["chunked"]
        summary = {"memory_ratio": c["memory_ratio"], "time_ratio": c["time_ratio"],
                   "memory_ok": c["memory_ratio"] <= TARGET_MEMORY, "time_ok": c["time_ratio"] <= TARGET_TIME,
                   "loss_rel_diff": abs(c["loss"] - naive["loss"]) / max(1e-30, abs(naive["loss"])),
                   "grad_weight_norm_rel_diff": abs(c["grad_weight_norm"] - naive["grad_weight_norm"])
                   / max(1e-30, naive["grad_weight_norm"])}
        print(f"\nchunked / naive: memory {summary['memory_ratio']:.3f} (target <= {TARGET_MEMORY}: "
              f"{'ok' if summary['memory_ok'] else 'MISSED'}), time {summary['time_ratio']:.3f}x "
              f"(target <= {TARGET_TIME}x: {'ok' if summary['time_ok'] else 'MISSED'}); "
              f"loss rel diff {summary['loss_rel_diff']:.1e}, |grad W| rel diff "
              f"{summary['grad_weight_norm_rel_diff']:.1e}")
    if args.json:
        out = {"config": {"vocab": args.vocab, "tokens": args.tokens, "hidden": args.hidden, "dtype": args.dtype,
                          "repeats": args.repeats, "chunk_rows": chunk, "threads": naive["threads"],
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))},
               "logits_bytes": logits_bytes, "logits_fp32_bytes": args.tokens * args.vocab * 4,
               "targets": {"memory_ratio": TARGET_MEMORY, "time_ratio": TARGET_TIME},
               "results": results, "summary": summary}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
