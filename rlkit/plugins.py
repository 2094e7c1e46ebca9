"""Every built-in plug-in, registered: :func:`load_builtins` imports each built-in package so that its
``@REGISTRY.register`` calls run. It lives here, not in ``rlkit.registry``, because the plug-ins import the registry
(a registry that imported them would close an import cycle)."""

from __future__ import annotations


def load_builtins() -> None:
    """Import every built-in plug-in package (idempotent: Python imports each module once)."""
    import rewards  # noqa: F401  (built-in reward functions: exact_match, math_verify, format)
    import rlkit.advantages  # noqa: F401
    import rlkit.aggregation  # noqa: F401
    import rlkit.environments  # noqa: F401  (single_turn, tools, hermes parser)
    import rlkit.losses  # noqa: F401
    import rlkit.objectives  # noqa: F401
    import rlkit.rollout.auto  # noqa: F401
    import rlkit.rollout.hf  # noqa: F401
    import rlkit.rollout.server_engine  # noqa: F401  (rollout.engine=vllm_server)
    import rlkit.rollout.vllm_engine  # noqa: F401  (imports vllm lazily, only when built)
    import rlkit.samplers  # noqa: F401
    import rlkit.selection  # noqa: F401
