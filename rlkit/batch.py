"""RolloutBatch: the typed tensors one step works on, with documented shapes.

Shapes: ``N`` completions (this process's share), ``T`` response tokens (padded width of this batch),
``K`` reward components. A multi-turn episode is one row: its response interleaves model tokens
(``response_mask``) and environment tokens (``token_mask & ~response_mask``, attended to but never trained on).
Masks are bool, True = include. Everything a plug-in adds (advantages,
token_weights, old_logprobs, ...) is a field here, so plug-ins talk through one object.

One name per meaning:

* a prompt's identity: ``group_ids`` = the prompt's global index in this step (rows with one id are compared with
  each other: a group); ``dataset_index`` = its dataset row (``PromptItem.index``), stable over steps and epochs,
  which per-prompt sampler state (VADE's posteriors) is keyed by; ``rlkit.samplers.base.RolloutPool.prompt_index``
  = a row's position among the prompts of one rollout phase, local to that phase and never in a batch.
* rewards: ``raw_rewards`` = the weighted sum of the reward functions, as collected; ``rewards`` = what the
  advantage estimator reads, the objective's transform of ``raw_rewards`` (the trainer sets it before scoring;
  until then it is a copy of ``raw_rewards``).
* masks are bool (True = include: ``response_mask``, ``token_mask``); weights are float in [0, 1]
  (``token_weights``, what the loss multiplies by).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class RolloutBatch:
    prompt_ids: list[list[int]]          # N lists of prompt token ids (no padding)
    response_ids: torch.Tensor           # [N, T] long, right-padded with pad id
    response_mask: torch.Tensor          # [N, T] bool, True on tokens the policy sampled (incl. EOS); the only
                                         #   tokens that enter losses, log-probs, entropy, lengths, selection, KL
    rollout_logprobs: torch.Tensor       # [N, T] float, sampling log-probs from the engine (0 where masked)
    truncated: torch.Tensor              # [N] bool, finish reason "length"
    group_ids: torch.Tensor              # [N] long, global prompt index; a group never spans processes
    rewards: torch.Tensor                # [N] float, objective(raw_rewards): what the estimator reads
    success: torch.Tensor                # [N] float: 1/0 success signal, NaN where no reward reports one
    reward_components: torch.Tensor      # [N, K] float, each reward function's raw value (NaN = failed/None)
    raw_rewards: torch.Tensor | None = None   # [N] float, weighted sum of the reward functions
    dataset_index: torch.Tensor | None = None  # [N] long, dataset row of the prompt (PromptItem.index; stable)
    pool_mean: torch.Tensor | None = None     # [N] float, baseline mean over all rows the sampler generated for
    pool_std: torch.Tensor | None = None      # [N] float  the prompt (Sampler.pool_stats; None = use the group)
    prompts: list[str] = field(default_factory=list)       # N prompt texts (for logs and reward fns)
    completions: list[str] = field(default_factory=list)   # N decoded completions (for logs and reward fns)
    columns: dict[str, list[Any]] = field(default_factory=dict)  # dataset columns, one value per completion
    reward_logs: list[dict[str, Any]] = field(default_factory=list)  # N dicts: what rewards gave log_extra
    old_logprobs: torch.Tensor | None = None   # [N, T] log pi_old(token), scoring pass, no grad
    ref_logprobs: torch.Tensor | None = None   # [N, T] log pi_ref(token)
    entropy: torch.Tensor | None = None        # [N, T] old-policy entropy per position
    values: torch.Tensor | None = None         # [N, T] critic values V(state before token t), scoring pass
    returns: torch.Tensor | None = None        # [N, T] value targets (set by advantage: gae)
    advantages: torch.Tensor | None = None     # [N, T] (0 where masked)
    token_weights: torch.Tensor | None = None  # [N, T] in [0, 1]; 0 = token not trained on
    token_mask: torch.Tensor | None = None     # [N, T] bool, every real token after the prompt: model tokens and
                                               #   tokens an environment inserted (context only); None = response_mask
    token_versions: torch.Tensor | None = None  # [N, T] long, policy version that sampled each token (-1: not
                                               # sampled, padding; None: the engine samples from the live policy)
    episodes: list[Any] = field(default_factory=list)  # N rlkit.environments.episode.EpisodeRecord (multi-turn only)
    extras: dict[str, Any] = field(default_factory=dict)  # plug-in specific data (documented by the plug-in)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """[N] long, number of response tokens per completion."""
        return self.response_mask.sum(-1)

    def select(self, index: torch.Tensor) -> "RolloutBatch":
        """Rows ``index`` ([n] long) of every per-completion field; T is kept."""
        idx = index.tolist()
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value[index]
            elif isinstance(value, list):
                out[f.name] = [value[i] for i in idx] if value else []
            elif f.name == "columns":
                out[f.name] = {k: [v[i] for i in idx] for k, v in value.items()}
            else:
                out[f.name] = value
        return RolloutBatch(**out)

    def to(self, device: torch.device | str) -> "RolloutBatch":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
        return self
