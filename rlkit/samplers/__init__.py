"""Samplers: which prompts are rolled out, how many completions each gets, over how many rounds.

The protocol (what the trainer calls, in order) and its messages are in ``rlkit.samplers.base``; the built-ins
(``fixed``, ``dynamic``, ``gvm``, ``reinforce_ada``, ``vade``) each live in a module of their own and import the base
module, never this package.
"""

from rlkit.samplers.base import RolloutPool, Sampler, SamplerTools
from rlkit.samplers import dynamic, fixed, gvm, reinforce_ada, vade  # noqa: F401  (registers the built-ins)

__all__ = ["RolloutPool", "Sampler", "SamplerTools"]
