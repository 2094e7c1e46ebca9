"""A test-only rollout engine that owns its weights, cheap on CPU: the ``hf`` engine on its own deep copy.

``rollout.engine: tests.owns_weights_engine:OwnCopyEngine`` (a ``module:attr`` spec, so nothing is added to
rlkit's registry). It samples from a private copy of the policy, so the trainer may update the policy while it
generates (``rollout.max_staleness > 0``); ``sync_weights`` copies the policy's ``state_dict`` into the copy and
counts the syncs, so ``version`` is the policy version it holds (syncs since it was built; a resumed run's engine
counts from its own start). Every completion's ``token_versions`` is that version (so ``RolloutBatch.token_versions``
tags each batch), and every ``generate`` call is recorded as a :class:`Generation` (the version, its request seeds
and thread): the seeds of step s are ``completion_seed(train.seed, s, group, j)``, unique to that step.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import torch

from rlkit.forward import token_logprobs
from rlkit.rollout import Completion, SamplingParams
from rlkit.rollout.hf import HFEngine


@dataclass(frozen=True)
class Generation:
    version: int          # policy version the engine held for the whole call
    seeds: tuple[int, ...]
    thread: str           # name of the thread that generated (background rollouts: "rlkit-rollout-...")


class OwnCopyEngine(HFEngine):
    """``hf`` generation on a deep copy of the policy; records the version behind every ``generate`` call."""

    owns_weights = True
    releases_memory = False
    created: list["OwnCopyEngine"] = []   # every instance, in order (tests read the engine a run built)

    def __init__(self, model, tokenizer, batch_size: int = 64):
        own = copy.deepcopy(model).requires_grad_(False)
        super().__init__(own, tokenizer, batch_size)
        self.version = 0
        self.generations: list[Generation] = []
        OwnCopyEngine.created.append(self)

    def sync_weights(self, model) -> dict[str, float]:
        with torch.no_grad():
            self.model.load_state_dict(model.state_dict())
        self.version += 1
        return {}

    def generate(self, prompt_ids, seeds, params: SamplingParams) -> list[Completion]:
        version = self.version
        out = super().generate(prompt_ids, seeds, params)
        if self.version != version:
            raise RuntimeError(f"weights changed during generation (version {version} -> {self.version})")
        self.generations.append(Generation(version, tuple(seeds), threading.current_thread().name))
        for c in out:   # -> RolloutBatch.token_versions: every batch carries the version it was generated from
            c.token_versions = [version] * len(c.token_ids)
        return out

    @torch.no_grad()
    def probe_logprobs(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """Log-probs of the probe under the engine's own copy (the sync canary compares them with the policy)."""
        ids = torch.tensor([response_ids])                                               # [1, T]
        mask = torch.ones_like(ids, dtype=torch.bool)                                    # [1, T]
        self.model.eval()
        lp, _ = token_logprobs(self.model, [list(prompt_ids)], ids, mask, pad_id=self.tokenizer.pad_token_id)
        return lp[0].float().cpu().tolist()                                              # [T]
