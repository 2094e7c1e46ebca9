"""D³S dual-level down-sampling (Wang et al., "Learning More with Less", arXiv 2509.22115; ALGORITHMS.md §5).

After the advantages are computed on the full groups (and never recomputed), one step trains only on

1. samples: the max-variance subset of the advantages -- ``mode: cross`` (the paper's D³S) over the whole
   batch, ``mode: intra`` (D³S-I, recommended for weakly aligned base models) within each group. Size:
   ``ceil(ratio x N)`` (cross) or ``ceil(ratio x group size)`` per group (intra), at least 2. Exact
   sort-based algorithm: the best subset is the j largest plus the (m - j) smallest for some j;
2. tokens: the top ``ceil(ratio x tokens)`` of the kept samples' tokens by |A_{i,t}| x H_{i,t}, H = the old
   policy's entropy from the scoring pass, ranked once over the kept samples (not per row).

Both ratios follow a schedule over training progress p = step / train.steps, aggressive early and relaxed
late: ``linear`` (the paper: (1 - p) start + p end) or ``cosine`` (rlkit extension). Dropped samples and
tokens get weight 0, so they leave the loss and the token-count normalisers of every aggregation. The masks are
computed once per rollout batch and kept across PPO epochs (rlkit; the paper does not say). Per-sequence
advantages for the sample step: the row's advantage (outcome estimators) or its mean over valid tokens
(token-level estimators such as GAE; rlkit choice). Selection runs over this process's batch.

rlkit defaults (the paper's N_init/N_final/K_init/K_final values are not published): samples 0.5 -> 1.0,
tokens 0.2 -> 1.0, linear. Metrics: ``sample_frac``, ``token_frac`` (of all response tokens), ``var_before``
and ``var_after`` (sample advantages), ``sample_ratio`` and ``token_ratio`` (the scheduled values).
Maths: ``rlkit.functional.selection``.
"""

from __future__ import annotations

import torch

from rlkit import functional as F
from rlkit import ops
from rlkit.batch import RolloutBatch
from rlkit.functional.selection import D3S_MODES
from rlkit.plugin_api import Selection
from rlkit.registry import SELECTIONS

SCHEDULES = {"linear": F.linear_schedule, "cosine": F.cosine_schedule}


def _ratio_pair(name: str, value) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(0.0 < float(v) <= 1.0 for v in pair):
        raise ValueError(f"{name}={value!r} must be a ratio in (0, 1] or [start, end] ratios in (0, 1]")
    return float(pair[0]), float(pair[1])


@SELECTIONS.register("d3s")
class D3SSelection(Selection):
    """Max-variance samples, then top |A| x entropy tokens, with scheduled keep ratios."""

    def __init__(self, mode: str = "cross", sample_ratio=(0.5, 1.0), token_ratio=(0.2, 1.0),
                 schedule: str = "linear"):
        F.check_choice("mode", mode, list(D3S_MODES))
        F.check_choice("schedule", schedule, list(SCHEDULES))
        self.mode, self.schedule = mode, SCHEDULES[schedule]
        self.sample_ratio = _ratio_pair("sample_ratio", sample_ratio)
        self.token_ratio = _ratio_pair("token_ratio", token_ratio)
        self.requires = frozenset({"entropy"}) if min(self.token_ratio) < 1.0 else frozenset()

    def __call__(self, batch: RolloutBatch, progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.response_mask                                                        # [N, T] bool
        adv = batch.advantages.float()                                                     # [N, T]
        seq_adv = ops.masked_mean(adv, mask, dim=-1)                                       # [N]
        s_ratio = self.schedule(*self.sample_ratio, min(progress, 1.0))
        t_ratio = self.schedule(*self.token_ratio, min(progress, 1.0))
        keep_rows = self._samples(seq_adv, batch.group_ids, s_ratio)                        # [N] bool
        kept_mask = mask & keep_rows[:, None]                                              # [N, T]
        if t_ratio < 1.0:
            if batch.entropy is None:
                raise ValueError("selection 'd3s' with token_ratio < 1 needs the old policy's entropy")
            kept_mask = F.d3s_select_tokens(adv, batch.entropy.float(), kept_mask, t_ratio)  # [N, T]
        n_tok = max(int(mask.sum()), 1)
        return kept_mask.float(), {
            "sample_frac": keep_rows.float().mean().item() if len(keep_rows) else 1.0,
            "token_frac": int(kept_mask.sum()) / n_tok,
            "var_before": seq_adv.var().item() if len(seq_adv) > 1 else 0.0,
            "var_after": seq_adv[keep_rows].var().item() if int(keep_rows.sum()) > 1 else 0.0,
            "sample_ratio": s_ratio, "token_ratio": t_ratio}

    def _samples(self, seq_adv: torch.Tensor, group_ids: torch.Tensor, ratio: float) -> torch.Tensor:
        if ratio >= 1.0 or len(seq_adv) < 2:
            return torch.ones(len(seq_adv), dtype=torch.bool)
        if self.mode == "cross":
            return F.d3s_select_samples(seq_adv, group_ids, F.d3s_keep_count(ratio, len(seq_adv)), mode="cross")
        # intra: one count per group; groups of different sizes get their own ceil(ratio x size)
        _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
        keep = torch.zeros(len(seq_adv), dtype=torch.bool)
        for size in counts.unique().tolist():
            rows = (counts[inverse] == size)                                               # [N] bool
            m = F.d3s_keep_count(ratio, size)
            keep[rows] = F.d3s_select_samples(seq_adv[rows], group_ids[rows], max(m, 2), mode="intra") \
                if size >= 2 else True
        return keep
