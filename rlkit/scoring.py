"""The scoring pass of a step: fill only the batch fields some plug-in requires, each with one no-grad pass.

``needs`` is the union of the plug-ins' ``requires`` (``Plugins.requires``, plus ``old_logprobs`` when a batch is
trained on by several optimizer steps), so a recipe pays only for what it uses: GRPO with one optimizer step per
batch runs no scoring forward at all, a KL loss adds the reference pass, ``advantage: gae`` the critic's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlkit.batch import RolloutBatch
from rlkit.critic import Critic, NoCritic
from rlkit.forward import ForwardSpec, score_batch


@dataclass(frozen=True)
class Scorer:
    """What the scoring pass runs with; built once by ``build_session``."""

    needs: frozenset[str]          # of rlkit.plugin_api.SCORING_FIELDS: old_logprobs, entropy, ref_logprobs, values
    spec: ForwardSpec
    model: Any                     # the prepared policy (DDP-wrapped when distributed); the critic reads its trunk
    policy: Any                    # the same module unwrapped: the policy's own log-probs come from it
    ref_model: Any | None          # frozen reference (LoRA: the adapter-off view) when ref_logprobs is needed
    critic: Critic | NoCritic      # a Critic whenever "values" is needed (check_recipe refuses a recipe without)

    def __call__(self, batch: RolloutBatch) -> dict[str, float]:
        """Set ``batch.old_logprobs`` / ``entropy`` / ``ref_logprobs`` / ``values`` as needed; returns metrics."""
        out = {}
        if self.needs & {"old_logprobs", "entropy"}:
            batch.old_logprobs, batch.entropy = score_batch(self.policy, batch, self.spec,
                                                            with_entropy="entropy" in self.needs)  # [N, T] x2
            # how far the engine's log-probs are from the trainer's (numerics, or a stale engine): logged, not used
            diff = (batch.old_logprobs - batch.rollout_logprobs).abs()[batch.response_mask]    # [tokens]
            out["rollout/logprob_diff"] = diff.mean().item() if diff.numel() else 0.0
        if "ref_logprobs" in self.needs:
            batch.ref_logprobs, _ = score_batch(self.ref_model, batch, self.spec, with_entropy=False)  # [N, T]
        if "values" in self.needs:
            batch.values = self.critic.score(self.model, batch, self.spec)                          # [N, T]
        return out
