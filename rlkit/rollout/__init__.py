"""Rollout engines: prompt token ids -> completions (token ids, sampling log-probs, finish reason).

Every engine implements :class:`RolloutEngine`. Requests are flat: one entry per completion, each with its own
``seed``; a completion's randomness depends only on that seed, never on which other requests share the batch
or on the number of processes (see :func:`completion_seed`). That is what makes 1-process and N-process runs,
and interrupted and uninterrupted runs, produce the same rollouts.

``rollout_logprobs`` are log-probs of the sampled token under the distribution it was actually sampled from:
``log_softmax(logits / T)`` restricted to the top-k / top-p set (vLLM's ``processed_logprobs``). With the
defaults (top_p=1, top_k=0) that is exactly what the trainer computes for ``old_logprobs``, so the two measure
the train/inference mismatch; with filtering they also include the truncation of the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlkit.plugin_api import Plugin

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
_M32 = 0xFFFFFFFF


class RolloutWorkerError(RuntimeError):
    """A rollout server is unreachable, died, hung, or refused a request (``rollout.engine: vllm_server``)."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0   # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0             # 0 = off


@dataclass
class Completion:
    """One completion, or one multi-turn episode (``rlkit.environments``): everything after the prompt.

    For an episode ``token_ids`` interleaves model tokens and tokens the environment inserted (tool results,
    follow-up turns); ``model_mask`` says which are which (True = sampled by the policy; None = all of them, the
    single-turn case), and ``logprobs`` is 0.0 on inserted tokens. ``prompt_ids`` is set when the episode's prompt
    differs from the dataset prompt's (tool schemas rendered into it, text added by the environment's reset)."""

    token_ids: list[int]                 # generated ids, up to and including the stop token
    logprobs: list[float]                # one per token in token_ids
    finish_reason: str                   # "stop" (EOS/stop token) or "length" (max_new_tokens reached)
    extras: dict[str, Any] = field(default_factory=dict)
    model_mask: list[bool] | None = None  # per token: True = sampled by the policy (None = every token)
    prompt_ids: list[int] | None = None   # the episode's own prompt (None = the PromptItem's prompt_ids)
    episode: Any = None                    # rlkit.environments.episode.EpisodeRecord of a multi-turn episode, else None
    token_versions: list[int] | None = None  # per token: the policy version that sampled it (-1: inserted by the
                                             # environment; None: the engine samples from the live policy)


def _mix32(x: int) -> int:
    x &= _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return ((x >> 16) ^ x) & _M32


def completion_seed(run_seed: int, step: int, group_id: int, sample_index: int, salt: int = 0) -> int:
    """A 31-bit seed for one completion, a pure function of its coordinates (not of batch layout)."""
    h = _mix32(run_seed * 0x9E3779B1 + salt)
    for part in (step, group_id, sample_index):
        h = _mix32(h ^ (part * 0x85EBCA6B + 0x27D4EB2F))
    return h & 0x7FFFFFFF


class RolloutEngine(Plugin):
    """Generates completions for a flat list of requests."""

    owns_weights: bool = False     # True: samples from its own copy (can generate while the policy trains)
    releases_memory: bool = False  # True: release() frees memory, so it cannot generate during training
    syncs_while_generating: bool = False  # True: sync_weights may run while generate runs in another thread
    #: what the engine holds on the training device, for ``rlkit estimate-memory``: "reserved_fraction" (vLLM:
    #: gpu_memory_utilization of the device), "generation_kv" (a KV cache of ``batch_size`` sequences, e.g. hf
    #: generate), "none" (it generates on other devices, e.g. a vLLM server fleet)
    device_memory: str = "none"
    version: int = 0               # policy version held: syncs so far (a resume sets it to the checkpoint's step
                                   # minus one before its sync); the numbering of Completion.token_versions
    precision: Any = None          # torch dtype the engine computes in, when it differs from the policy's

    def generate(self, prompt_ids: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Completion]:
        raise NotImplementedError

    def sync_weights(self, model: Any) -> dict[str, float]:
        """Make the engine sample from ``model``'s current weights; returns timing metrics."""
        raise NotImplementedError

    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float] | None:
        """The engine's own log-probs of ``response_ids`` (temperature 1), for the sync canary.

        None = the engine samples from the training module itself, so there is nothing to verify.
        """
        return None

    def probe_all(self, prompt_ids: list[int], response_ids: list[int]) -> dict[str, list[float]]:
        """Log-probs of the probe from every replica that holds its own weights (one entry per worker)."""
        lp = self.probe_logprobs(prompt_ids, response_ids)
        return {} if lp is None else {"engine": lp}

    def release(self) -> None:
        """Give accelerator memory back to training until the next sync/generate (sleep mode)."""

    def close(self) -> None:
        pass
