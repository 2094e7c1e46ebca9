"""``environment: single_turn`` (the default) -- one completion per prompt, scored as it is.

    episode = prompt -> one model turn (rollout.max_new_tokens) -> rewards

This is the rollout phase rlkit has always had: the runner calls ``engine.generate`` once for every requested
completion, with the dataset prompt exactly as ``data`` rendered it; nothing else is inserted. No options.
"""

from __future__ import annotations

from rlkit.environments.base import Environment
from rlkit.registry import ENVIRONMENTS


@ENVIRONMENTS.register("single_turn")
class SingleTurn(Environment):
    """One completion per prompt (no tools, no further turns): the default."""

    multi_turn = False
