"""vLLM plugin (entry point group ``vllm.general_plugins``, declared in pyproject.toml): registers rlkit's weight
transfer backend ``rlkit_gloo`` (:mod:`rlkit.rollout.gloo_transfer`) with vLLM's worker- and trainer-side
factories. vLLM loads general plugins in every process it starts (API server, engine core, workers), so
``vllm serve M --weight-transfer-config '{"backend": "rlkit_gloo"}'`` works on any machine where rlkit is
installed next to vLLM. Set ``VLLM_PLUGINS`` to limit which plugins vLLM loads (include ``rlkit``).
"""

from __future__ import annotations

BACKEND = "rlkit_gloo"


def register() -> None:
    """Idempotent: vLLM may call it several times in one process."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, "rlkit.rollout.gloo_transfer", "GlooWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, "rlkit.rollout.gloo_transfer", "GlooTrainerEngine")
