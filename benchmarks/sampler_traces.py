"""Per-prompt traces of the samplers in a benchmark process, and where their rollouts went (issue 18's evidence).

``install(path)`` wraps ``finalize`` (and VADE's / GVM's ``allocate``) of every registered sampler class *in this
process only* (a benchmark, never the package) so that each rollout phase appends one JSON line to ``path``:

    {"step": s, "sampler": name, "prompts": [[kind, generated, successes, kept, extra, dataset row], ...]}

``kind`` is the prompt's ``kind`` column (the benchmark task writes easy / carry / product), ``generated`` every
completion made for it this step (probes and extra rounds included), ``successes`` among them, ``kept`` the
completions trained, ``extra`` what the sampler decided from: GVM (p_i, G_i, n_i), VADE (posterior mean, chosen),
Reinforce-Ada (rounds used, exited). Prompts a sampler skipped before rollout (VADE's unchosen candidates, DAPO's
unused ones) appear with generated = 0.

``summary(paths)`` turns the traces of one sampler's runs into per-kind shares: of the rollouts generated, of the
trained completions, of the informative (non-constant) groups, the observed success rate, and the sampler's own view.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from rlkit.registry import SAMPLERS
from rlkit.samplers.gvm import GVMSampler
from rlkit.samplers.reinforce_ada import ReinforceAdaSampler
from rlkit.samplers.vade import VADESampler

_PATH: list[Path] = []


def _kinds(pool) -> list[str]:
    return [str(p.columns.get("kind", "?")) for p in pool.prompts]


def _extra(sampler, pool, prompt: int, rows: list[int]) -> list:
    if isinstance(sampler, GVMSampler):
        p, g, _ = sampler.estimates.get(pool.prompts[prompt].index, (float("nan"), float("nan"), 0))
        alloc = sum(1 for r in rows if pool.round_index[r] >= sampler._alloc_round)
        return [p, g, alloc]
    if isinstance(sampler, VADESampler):
        return list(sampler._trace_candidates.get(prompt, (float("nan"), False)))
    if isinstance(sampler, ReinforceAdaSampler):
        return [1 + max((pool.round_index[r] for r in rows), default=-1), not sampler._active[prompt]]
    return []


def _wrap_finalize(cls) -> None:
    original = cls.finalize

    def finalize(self, pool):
        keep = original(self, pool)
        kept = defaultdict(int)
        for r in keep:
            kept[pool.prompt_index[r]] += 1
        rows = defaultdict(list)
        for r, p in enumerate(pool.prompt_index):
            rows[p].append(r)
        prompts = []
        for i, kind in enumerate(_kinds(pool)):
            succ = sum(1 for r in rows[i] if pool.success[r] == 1)
            prompts.append([kind, len(rows[i]), succ, kept[i], _extra(self, pool, i, rows[i]), pool.prompts[i].index])
        with _PATH[0].open("a") as f:
            f.write(json.dumps({"step": self.step, "sampler": type(self).__name__, "prompts": prompts}) + "\n")
        return keep

    cls.finalize = finalize


def _wrap_vade_allocate(cls) -> None:
    original = cls.allocate

    def allocate(self, prompts, group_size):
        counts = original(self, prompts, group_size)
        a, b = self._decayed([p.index for p in prompts], self.step)  # [C], [C]
        means = (a / (a + b)).tolist()
        self._trace_candidates = {i: (m, c > 0) for i, (m, c) in enumerate(zip(means, counts))}
        return counts

    cls.allocate = allocate


def install(path: Path) -> None:
    """Trace every sampler of this process into ``path`` (replaces the file; call once per run)."""
    first = not _PATH
    _PATH[:] = [Path(path)]
    _PATH[0].write_text("")
    if first:
        for name in SAMPLERS.names():
            _wrap_finalize(SAMPLERS.get(name))
        _wrap_vade_allocate(VADESampler)


def summary(paths: list[Path]) -> dict[str, dict[str, float]]:
    """Per prompt kind, over all steps of all ``paths``: shares of generated / trained / informative, success."""
    tot = defaultdict(lambda: defaultdict(float))
    views = defaultdict(lambda: defaultdict(list))
    for path in paths:
        for line in Path(path).read_text().splitlines():
            for kind, gen, succ, kept, extra in (entry[:5] for entry in json.loads(line)["prompts"]):
                t = tot[kind]
                t["candidates"] += 1
                t["generated"] += gen
                t["successes"] += succ
                t["kept"] += kept
                t["informative"] += float(0 < succ < gen and kept > 0)
                t["groups"] += float(kept > 0)
                for j, value in enumerate(extra):
                    if value == value:   # NaN = no estimate yet
                        views[kind][j].append(float(value))
    all_gen = sum(t["generated"] for t in tot.values()) or 1.0
    all_kept = sum(t["kept"] for t in tot.values()) or 1.0
    all_inf = sum(t["informative"] for t in tot.values()) or 1.0
    return {kind: {"generated_share": t["generated"] / all_gen, "trained_share": t["kept"] / all_kept,
                   "informative_share": t["informative"] / all_inf,
                   "success_rate": t["successes"] / t["generated"] if t["generated"] else float("nan"),
                   "rollouts_per_candidate": t["generated"] / t["candidates"],
                   **{f"view_{j}": statistics.fmean(v) for j, v in views[kind].items()}}
            for kind, t in sorted(tot.items())}


def persistence(paths: list[Path], min_gap: int = 1) -> dict[str, float]:
    """Does a prompt's last outcome predict its next one? Over consecutive visits of the same dataset row (rolled
    out both times, at least ``min_gap`` steps apart): P(informative now | informative last visit),
    P(informative now | constant last visit), and the mean steps between visits. A pre-rollout selector (VADE)
    can only beat chance by the gap between the two probabilities."""
    counts = defaultdict(float)
    gaps: list[int] = []
    for path in paths:
        last: dict[int, tuple[int, bool]] = {}
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            for kind, gen, succ, kept, extra, row in record["prompts"]:
                if gen < 2:
                    continue
                now = 0 < succ < gen
                if row in last and record["step"] - last[row][0] >= min_gap:
                    before = last[row][1]
                    counts[f"{before:d}{now:d}"] += 1
                    gaps.append(record["step"] - last[row][0])
                last[row] = (record["step"], now)
    after_inf = counts["10"] + counts["11"]
    after_const = counts["00"] + counts["01"]
    return {"p_informative_after_informative": counts["11"] / after_inf if after_inf else float("nan"),
            "p_informative_after_constant": counts["01"] / after_const if after_const else float("nan"),
            "revisits": after_inf + after_const, "mean_gap_steps": statistics.fmean(gaps) if gaps else float("nan")}
